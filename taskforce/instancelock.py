"""One taskforce per config and roles file: its id and the lock that holds it.

``instance_id`` names a taskforce by what it supervises (its config and
roles files), so that after a crash the next one finds what the last one
left; ``InstanceLock`` makes sure two taskforces with the same id never run
at once, so a sweep never takes the processes of a live taskforce.  Split
out of ``taskforce.tracking``, which re-exports both.

This module only takes a lock in a private folder; it never looks at,
signals or starts a process.
"""

from __future__ import annotations

import errno
import os

from taskforce.core.sha import sha256
from taskforce.pidlock import lock_and_write_pid


def instance_id(config_path: str, roles_path: str | None) -> str:
    """A short stable name for the taskforce that runs this config and roles file."""
    text = os.path.abspath(config_path) + "\0" + (os.path.abspath(roles_path) if roles_path else "")
    return str(sha256(text.encode(errors="surrogateescape")).hexdigest())[:16]


class InstanceHeld(Exception):
    """Another live taskforce supervises the same config and roles."""


class InstanceLock:
    """An exclusive lock per id, held for as long as the taskforce runs.

    It lives in a folder only its user may write (``/run/taskforce`` for
    root, else a private folder in the temporary directory), so no one else
    can hold it to keep taskforce from starting.  Released by the kernel when
    the process dies or execs (a reset takes it again at once).
    """

    def __init__(self, ident: str) -> None:
        self.path = lock_path(ident)
        self.fd: int | None = None

    def claim(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd, owner = lock_and_write_pid(self.path, flags, 0o600)
        if owner is not None:
            raise InstanceHeld(
                f"another taskforce (pid {owner}) already supervises this config "
                f"and roles file (lock {self.path}); stop it first"
            )
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_path(ident: str) -> str:
    """Where the lock of the taskforce with id ``ident`` is (run by this
    user); while it is held, the pid of its holder is written in it."""
    return os.path.join(_private_folder(), f"{ident}.lock")


def _private_folder() -> str:
    if os.geteuid() == 0 and os.path.isdir("/run"):
        folder = "/run/taskforce"
    else:
        import tempfile  # (not for root: it brings shutil and random)

        folder = os.path.join(tempfile.gettempdir(), f"taskforce-{os.geteuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.path.isdir(folder):
        raise OSError(errno.EPERM, "not a private folder of this user", folder)
    return folder
