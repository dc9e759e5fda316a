"""The one exception tree of wg-wrap.

Everything the user can get wrong or the system can refuse ends up as a
``WgWrapError``; the CLI prints it as ``wg-wrap: error: …`` plus the hint.
"""

from __future__ import annotations


class WgWrapError(Exception):
    """Root of all errors wg-wrap reports to the user."""

    exit_status = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(WgWrapError):
    """A malformed or unsupported WireGuard configuration file.

    ``path`` and ``line`` locate the problem; ``line`` is None for whole-file
    problems (a peer without a public key, an empty file, ...).
    """

    def __init__(
        self, path: str, line: int | None, message: str, *, hint: str | None = None
    ) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.line = line
        self.detail = message


class UsageError(WgWrapError):
    """Wrong command-line usage (exit status 2, like argparse)."""

    exit_status = 2


class ResolveError(WgWrapError):
    """An endpoint hostname could not be resolved on the host."""


class UAPIError(WgWrapError):
    """The sidecar refused a UAPI request or the exchange broke."""

    def __init__(self, message: str, *, errno: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


class SetupError(WgWrapError):
    """Creating the namespaces, the sidecar or the network inside failed."""


class RuntimeDirError(WgWrapError):
    """The runtime directory is missing, unsafe or owned by someone else."""


class ProfileError(WgWrapError):
    """A profile is unknown, busy, or conflicts with the requested config."""
