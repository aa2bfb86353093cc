"""Files taskforce creates for itself: private whatever the umask.

The event log and its rotations, output files and the control socket hold
what tasks print, who did what and (digested) what the config says: they are
created mode 0600, or 0640 (a socket 0660) with ``settings.file_group``,
then set to that mode explicitly, since a umask can only take bits away and
an existing file keeps the mode it had.
"""

from __future__ import annotations

import grp
import os

_GROUP: list[int | None] = [None]


def set_group(name: str | int | None) -> None:
    """Use group ``name`` (a name or a number) for the files created from now
    on; None: owner only.  Raises KeyError for an unknown group."""
    if name is None or name == "":
        _GROUP[0] = None
    elif isinstance(name, int) or str(name).isdigit():
        _GROUP[0] = int(name)
    else:
        _GROUP[0] = grp.getgrnam(str(name)).gr_gid


def group_id() -> int | None:
    return _GROUP[0]


def mode() -> int:
    return 0o600 if _GROUP[0] is None else 0o640


def open_private(path: str, flags: int, *, keep_existing: bool = False) -> int:
    """``os.open`` with ``O_CREAT``, the file made private (see the module).

    ``keep_existing``: a file that is already there keeps its mode (an
    output file whose mode the operator chose, as logrotate's ``create``).
    """
    flags |= os.O_CREAT
    if keep_existing:
        try:
            fd = os.open(path, flags | os.O_EXCL, mode())
        except FileExistsError:
            return os.open(path, flags & ~os.O_CREAT)
    else:
        fd = os.open(path, flags, mode())
    try:
        set_private(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_private(fd: int) -> None:
    os.fchmod(fd, mode())
    if _GROUP[0] is not None:
        os.fchown(fd, -1, _GROUP[0])
