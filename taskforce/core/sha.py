"""SHA-256 without OpenSSL: CPython's own implementation where it has one.

``hashlib`` loads OpenSSL's libcrypto (half a MiB of the daemon's memory)
for what CPython also ships as a small built-in module: ``_sha256`` up to
3.11, ``_sha2`` from 3.12.  Other Pythons get ``hashlib``'s.  Pure: no IO.
"""

from __future__ import annotations

__all__ = ["sha256"]

try:
    from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover (depends on the Python)
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]
