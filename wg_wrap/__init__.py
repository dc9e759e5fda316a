"""wg-wrap: rootless WireGuard for one program."""

__version__ = "0.1.0"
