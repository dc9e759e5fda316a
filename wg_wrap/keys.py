"""WireGuard keys: generated here, public keys derived by the sidecar.

The public key of a private key is computed by ``wg-wrap-sidecar pubkey``
(Go's crypto/ecdh: a constant-time X25519), never by arithmetic of our own:
the private key is usually the user's real one.  It travels over a pipe to
the sidecar's stdin, like ``wg pubkey``'s: never in argv or the environment.
"""

from __future__ import annotations

import base64
import os
import subprocess

from wg_wrap import paths
from wg_wrap.errors import SetupError

KEY_LEN = 32


def generate_private_key() -> bytes:
    """A new private key from the kernel's CSPRNG, clamped as ``wg genkey`` does."""
    k = bytearray(os.urandom(KEY_LEN))
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def public_key(private_key: bytes) -> bytes:
    """X25519(private_key, 9), computed by ``wg-wrap-sidecar pubkey``."""
    if len(private_key) != KEY_LEN:
        raise ValueError("a WireGuard private key has 32 bytes")
    sidecar = paths.sidecar()
    try:
        done = subprocess.run(
            [sidecar, "pubkey"], input=encode(private_key) + "\n", capture_output=True,
            text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SetupError(f"running {sidecar} pubkey: {e}") from e
    text = done.stdout.strip()
    try:
        public = base64.b64decode(text, validate=True)
    except ValueError:
        public = b""
    if done.returncode != 0 or len(public) != KEY_LEN:
        reason = done.stderr.strip() or f"exit status {done.returncode}, output {text!r}"
        raise SetupError(f"deriving the public key: {reason}")
    return public


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode()
