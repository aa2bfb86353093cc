"""Which files a ``python`` watch stands for: a script and the modules it
imports from outside the Python installation (found with ``modulefinder``).

Split from ``targets`` so that daemons without python events never load
modulefinder.  It only reads the file system and never watches anything.
"""

from __future__ import annotations

import errno
import importlib.machinery
import modulefinder
import os
import site
import sys
import sysconfig
from collections.abc import Mapping
from types import CodeType

from taskforce.watch.targets import (
    _SHARED_PREFIXES,
    absolute,
    find_program,
    is_python,
    log,
    program_targets,
    python_entry,
)


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
