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

import errno
import importlib.machinery
import logging
import modulefinder
import os
import site
import stat
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import CodeType

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


def installation_roots() -> tuple[str, ...]:
    """Directories whose modules belong to the Python installation."""
    roots: set[str] = set()
    base_vars = {
        "base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_base": sys.base_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    for config_vars in (None, base_vars):
        paths = sysconfig.get_paths(vars=config_vars)
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if key in paths:
                roots.add(paths[key])
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # old virtualenv's site module
        pass
    try:
        roots.add(site.getusersitepackages())
    except AttributeError:
        pass
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        if os.path.realpath(prefix) not in _SHARED_PREFIXES:
            roots.add(prefix)
    for entry in sys.path:
        tail = os.path.basename(entry.rstrip(os.sep))
        if tail in ("site-packages", "dist-packages", "lib-dynload") or os.path.isfile(entry):
            roots.add(entry)
    resolved = {os.path.realpath(root) for root in roots if root}
    return tuple(sorted(resolved))


_ROOTS: tuple[str, ...] | None = None


def is_installed(path: str) -> bool:
    """Whether ``path`` lies inside the Python installation (stdlib, site)."""
    global _ROOTS
    if _ROOTS is None:
        _ROOTS = installation_roots()
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in _ROOTS)


def _file_of(module: modulefinder.Module) -> str | None:
    # modulefinder.Module is undocumented; typeshed does not list its fields.
    value = getattr(module, "__file__", None)
    return value if isinstance(value, str) else None


def _path_of(module: modulefinder.Module) -> list[str]:
    value = getattr(module, "__path__", None)
    return [entry for entry in value if isinstance(entry, str)] if value else []


def _is_own(module: modulefinder.Module) -> bool:
    filename = _file_of(module)
    return filename is not None and not is_installed(filename)


class _Finder(modulefinder.ModuleFinder):
    """A ModuleFinder that does not descend into installed modules.

    Only imports made by the user's own code can lead to the user's own
    modules; scanning the standard library as well would make discovery take
    seconds for no gain.
    """

    def scan_code(self, co: CodeType, m: modulefinder.Module) -> None:
        filename = _file_of(m)
        if filename and is_installed(filename):
            return
        super().scan_code(co, m)


def find_module_file(name: str, path: list[str]) -> str | None:
    """The file ``python -m name`` would run, found without importing."""
    search: list[str] | None = path
    fullname = ""
    spec = None
    for part in name.split("."):
        fullname = f"{fullname}.{part}" if fullname else part
        if search is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:
        # ``python -m package`` runs the package's __main__.
        main = importlib.machinery.PathFinder.find_spec(
            f"{fullname}.__main__", list(spec.submodule_search_locations)
        )
        return main.origin if main is not None and main.has_location else None
    return spec.origin if spec.has_location else None


def _module_files(finder: modulefinder.ModuleFinder) -> dict[str, str]:
    files: dict[str, str] = {}
    for module in finder.modules.values():
        filename = _file_of(module)
        if filename and os.path.isfile(filename) and not is_installed(filename):
            files.setdefault(absolute(filename), absolute(filename))
    return files


def _missing_candidates(finder: modulefinder.ModuleFinder, top: str) -> dict[str, str]:
    """Files whose appearance would satisfy an import that fails today.

    Only for imports made by the user's own code, and only where the user's
    code would find them: next to the script, or inside the user's package.
    """
    own = {name for name, module in finder.modules.items() if name == "__main__" or _is_own(module)}
    found: dict[str, str] = {}
    for missing, callers in finder.badmodules.items():
        if not own.intersection(callers):
            continue
        parts = missing.split(".")
        directories = [top]
        rest = parts
        for cut in range(len(parts) - 1, 0, -1):
            package = finder.modules.get(".".join(parts[:cut]))
            if package is not None:
                directories = [d for d in _path_of(package) if not is_installed(d)]
                rest = parts[cut:]
                break
        for directory in directories:
            for candidate in (
                os.path.join(directory, rest[0] + ".py"),
                os.path.join(directory, rest[0], "__init__.py"),
            ):
                found.setdefault(absolute(candidate), absolute(candidate))
    return found


def python_targets(
    argv: tuple[str, ...], search_path: str, previous: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The script a Python command runs and every module of it to watch.

    Modules inside the Python installation are left out.  If the imports
    cannot be read (the script is mid-edit and does not compile), the script
    and the ``previous`` modules stay watched.
    """
    entry = python_entry(argv)
    if entry is None:
        log.warning("python event: cannot tell which script %s runs", " ".join(argv))
        return {}
    kind, value = entry
    finder_path = [p for p in sys.path if p]
    targets: dict[str, str] = {}
    if kind == "module":
        top = os.getcwd()
        module_file = find_module_file(value, [top, *finder_path])
        if module_file is None:
            log.warning("python event: module %s not found", value)
            first = value.split(".")[0]
            for candidate in (os.path.join(top, first + ".py"), os.path.join(top, first)):
                targets[absolute(candidate)] = candidate
            return targets
        script = absolute(module_file)
        targets[script] = script
    else:
        if os.sep not in value and not is_python(argv[0]):
            found = find_program(value, search_path)
            if found is None:
                return program_targets(value, search_path)
            value = found
        script = absolute(value)
        targets[script] = value
        top = os.path.dirname(script)
    finder = _Finder(path=[top, *finder_path])
    try:
        if kind == "module":
            finder.import_hook(value)
        else:
            finder.run_script(script)
    except Exception as exc:  # any failure (a SyntaxError mid-edit): keep what we had
        if not isinstance(exc, OSError) or exc.errno != errno.ENOENT:
            log.warning("python event: cannot read the imports of %s: %s", script, exc)
        for path, shown in (previous or {}).items():
            targets.setdefault(path, shown)
        return targets
    for path, shown in _module_files(finder).items():
        targets.setdefault(path, shown)
    for path, shown in _missing_candidates(finder, top).items():
        targets.setdefault(path, shown)
    return targets


# -------------------------------------------------------------- dispatcher


def targets_for(effect: Watch, previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """Absolute path -> path as reported, for everything ``effect`` watches."""
    if effect.kind == "file":
        return {absolute(path): path for path in reversed(effect.paths)}
    if effect.kind == "executable":
        if not effect.paths:
            return {}
        return program_targets(effect.paths[0], effect.search_path)
    if effect.kind == "python":
        return python_targets(effect.paths, effect.search_path, previous)
    log.warning("watch %s: unknown kind %r, nothing watched", effect.key, effect.kind)
    return {}
