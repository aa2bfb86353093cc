"""What a ``Watch`` effect means on disk, shared by every watcher backend.

It answers three questions: which files a ``Watch`` stands for (a plain path,
a program found on a PATH, a Python script and the modules it imports), which
directory entries decide what a path resolves to (its *chain*: symlinks on the
way, the nearest existing ancestor of what is missing), and a cheap stat
*signature* that tells whether a path really changed.

It only reads the file system.  It must never watch anything, never keep state
between calls and never decide what a change means for a task.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from taskforce.core.effects import Watch

log = logging.getLogger("taskforce")

#: (st_mtime_ns, st_size, st_ino, st_dev) of what a path resolves to.
NodeSignature = tuple[int, int, int, int]

#: What a path resolves to, and the symlinks (path, target) it went through.
Signature = tuple[NodeSignature | None, tuple[tuple[str, str], ...]]

#: Symlinks followed before giving up, as the kernel does (ELOOP).
MAX_LINK_HOPS = 40

#: Prefixes shared by the whole system: a Python installed there does not make
#: everything under them "part of the Python installation".
_SHARED_PREFIXES = frozenset({"/", "/usr", "/usr/local"})


def absolute(path: str) -> str:
    """``path`` made absolute against the current directory, normalised."""
    return os.path.abspath(path)


# ------------------------------------------------------------------ chains


@dataclass(frozen=True)
class Chain:
    """The directory entries whose changes affect what a path resolves to.

    ``entries`` are ``(directory, name)`` pairs, in resolution order: every
    symlink followed, then the resolved file itself, or -- when something is
    missing -- the missing name in its nearest existing directory.  ``final``
    is the entry of the resolved file itself (``None`` when an intermediate
    directory is missing); events on it are changes of the file, events on the
    other entries only matter if they change where the path leads.  ``links``
    are the ``(symlink, target)`` pairs followed.
    """

    entries: tuple[tuple[str, str], ...]
    final: tuple[str, str] | None
    links: tuple[tuple[str, str], ...]

    @property
    def directories(self) -> frozenset[str]:
        return frozenset(directory for directory, _ in self.entries)


#: The chain of a path not walked yet.
NOWHERE = Chain((), None, ())


def _components(path: str) -> list[str]:
    return [part for part in path.split(os.sep) if part not in ("", ".")]


def walk(path: str) -> Chain:
    """Resolve absolute ``path`` one component at a time, recording its chain.

    Like ``realpath``, but it notes each symlink's entry (so a swapped link,
    such as a Kubernetes ConfigMap's ``..data``, is seen) and stops at the
    first missing component, noting the entry that would bring it into being.
    """
    entries: list[tuple[str, str]] = []
    links: list[tuple[str, str]] = []
    final: tuple[str, str] | None = None
    pending = _components(path)
    current = os.sep
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        last = not pending
        try:
            info = os.lstat(candidate)
        except OSError:
            # Missing (or unreadable): wait for this name to appear here.
            entries.append((current, name))
            if last:
                final = (current, name)
            break
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            try:
                target = os.readlink(candidate)
            except OSError:
                target = None
            entries.append((current, name))
            if target is None or hops > MAX_LINK_HOPS:
                break
            links.append((candidate, target))
            if os.path.isabs(target):
                current = os.sep
            pending[:0] = _components(target)
            continue
        if last:
            entries.append((current, name))
            final = (current, name)
        elif stat.S_ISDIR(info.st_mode):
            current = candidate
        else:
            # A file where a directory should be: only its replacement helps.
            entries.append((current, name))
            break
    return Chain(tuple(entries), final, tuple(links))


#: Re-walks after moving the watches, until the chains stand still.
MAX_SETTLE_ROUNDS = 8


def settle(chains: dict[str, Chain], paths: Iterable[str], sync: Callable[[], None]) -> None:
    """Re-walk ``paths`` and ``sync`` the watches until the chains hold still.

    A directory can appear between walking a chain and watching it; walking
    again after the watches are in place closes that gap.  ``sync`` makes the
    backend's watches those ``chains`` need.
    """
    todo = [path for path in paths if path in chains]
    for path in todo:
        chains[path] = walk(path)
    for _ in range(MAX_SETTLE_ROUNDS):
        sync()
        moved = []
        for path in todo:
            chain = walk(path)
            if chain != chains[path]:
                chains[path] = chain
                moved.append(path)
        if not moved:
            return
        todo = moved
    sync()


def node_signature(path: str) -> NodeSignature | None:
    """Stat signature of what ``path`` resolves to, ``None`` if missing."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)


def signature(path: str) -> Signature:
    """What ``path`` resolves to and through which symlinks.

    Equal signatures mean "nothing a process reading ``path`` would notice
    has changed" for every practical purpose: a write changes mtime (and
    usually size), a replacement changes the inode, a symlink swap changes
    the links even when the new target looks identical.
    """
    return (node_signature(path), walk(path).links)


# ------------------------------------------------------------- executables


def _search_dirs(search_path: str) -> list[str]:
    value = search_path or os.environ.get("PATH", os.defpath)
    # An empty PATH entry means the current directory, as for execvp.
    return [entry or "." for entry in value.split(os.pathsep)]


def find_program(name: str, search_path: str) -> str | None:
    """Where ``execvp`` would find ``name`` on ``search_path``, or ``None``."""
    for directory in _search_dirs(search_path):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def program_targets(name: str, search_path: str) -> dict[str, str]:
    """Paths to watch for program ``name``: itself, or where it may appear."""
    if os.sep in name:
        return {absolute(name): name}
    found = find_program(name, search_path)
    if found is not None:
        return {absolute(found): found}
    # Not installed yet: watch for it to appear in every PATH directory.
    targets: dict[str, str] = {}
    for directory in _search_dirs(search_path):
        candidate = os.path.join(directory, name)
        targets.setdefault(absolute(candidate), candidate)
    return targets


# ------------------------------------------------------------------ python

#: Interpreter options that take a value (``-W ignore``, ``-X dev``).
_PY_OPTIONS_WITH_VALUE = frozenset("WX")
_PY_LONG_OPTIONS_WITH_VALUE = frozenset({"--check-hash-based-pycs"})


def is_python(program: str) -> bool:
    return os.path.basename(program).startswith("python")


def python_entry(argv: tuple[str, ...]) -> tuple[str, str] | None:
    """What a Python command line runs: ``("script", path)``, ``("module", name)``.

    ``argv[0]`` is the script unless it is an interpreter; then the command
    line is read as CPython reads it, falling back to the first argument
    ending in ``.py``.  ``None`` when nothing can be found (``-c``, stdin).
    """
    if not argv:
        return None
    if not is_python(argv[0]):
        return ("script", argv[0])
    args = list(argv[1:])
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            if index < len(args):
                return ("script", args[index])
            break
        if arg.startswith("--"):
            if arg in _PY_LONG_OPTIONS_WITH_VALUE:
                index += 1
            continue
        if arg == "-" or not arg.startswith("-"):
            if arg != "-":
                return ("script", arg)
            break
        # Short options may be combined (-Bu); -c, -m, -W, -X take a value.
        flags = arg[1:]
        for position, flag in enumerate(flags):
            if flag in "cm" or flag in _PY_OPTIONS_WITH_VALUE:
                value = flags[position + 1 :]
                if not value and index < len(args):
                    value = args[index]
                    index += 1
                if flag == "m":
                    return ("module", value) if value else None
                if flag == "c":
                    return _first_py(argv[1:])
                break
    return _first_py(argv[1:])


def _first_py(args: Iterable[str]) -> tuple[str, str] | None:
    for arg in args:
        if arg.endswith(".py"):
            return ("script", arg)
    return None


def targets_for(effect: Watch, previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """Absolute path -> path as reported, for everything ``effect`` watches."""
    if effect.kind == "file":
        return {absolute(path): path for path in reversed(effect.paths)}
    if effect.kind == "executable":
        if not effect.paths:
            return {}
        return program_targets(effect.paths[0], effect.search_path)
    if effect.kind == "python":
        # Loaded only when a task has a python event: modulefinder and
        # sysconfig cost memory every other daemon need not pay.
        from taskforce.watch.pymodules import python_targets

        return python_targets(effect.paths, effect.search_path, previous)
    log.warning("watch %s: unknown kind %r, nothing watched", effect.key, effect.kind)
    return {}
