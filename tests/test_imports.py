"""A daemon imports what it needs to start, and nothing it may never use.

Importing is most of taskforce's start-up time and much of its base memory.
What only some configs, a tool, or an operator's request use is imported
where it is first used; this keeps it so: in a fresh interpreter, importing
what ``taskforce`` runs to start a daemon loads none of the modules below.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: Modules a daemon with a plain config never needs, with who imports them.
NOT_AT_START = {
    # the lifecycle's machine: built for the docs and tests (core.lifecycle)
    "transitions": "core.lifecycle",
    "six": "transitions",
    # the control server, its pages and what it reports (control/)
    "taskforce.control.server": "daemon.LazyServer, once -w or settings.http asks for it",
    "taskforce.control.http": "control.server",
    "taskforce.control.stream": "control.server",
    "taskforce.core.status": "control.manage, plans",
    "taskforce.costs": "control.server, control.api",
    # recording, tools, the operator's commands
    "taskforce.eventlog": "cli, with --record",
    "taskforce.core.snapshot": "the recorder, tools",
    "taskforce.tools": "taskforce replay|simulate|plan",
    "taskforce.tfctl": "tfctl",
    "taskforce.manpages": "man pages",
    "taskforce.completion": "taskforce completion",
    # stdlib only rare paths need
    "json": "sockets passed through a reset, odd config keys in errors",
    "tempfile": "private folders of a daemon not run by root",
    "subprocess": "ctypes.util, for a libc without inotify",
    "ctypes.util": "watch.inotify, for a libc without inotify",
    "typing": "control.server (h11); annotations only elsewhere",
}


def test_starting_a_daemon_imports_none_of_what_it_may_never_use() -> None:
    code = "import sys, taskforce.cli, taskforce.daemon; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(out.split())
    assert "taskforce.core.supervisor" in loaded  # (the probe itself works)
    wrong = {name: why for name, why in NOT_AT_START.items() if name in loaded}
    assert not wrong, f"imported at start, but only needed by: {wrong}"


def _loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing the daemon's
    own (``taskforce.cli`` and ``.daemon``) and ``modules``."""
    code = (
        f"import sys, taskforce.cli, taskforce.daemon, {', '.join(modules)};"
        " print('\\n'.join(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


def test_a_control_server_without_tls_loads_no_openssl() -> None:
    # ssl (libssl and libcrypto: about 4 MiB of PSS) and hmac (libcrypto)
    # come with the first TLS listener and the first token checked; the
    # recorder's digests use CPython's own SHA-256.
    loaded = _loaded_by("taskforce.control.server", "taskforce.eventlog")
    assert "taskforce.control.http" in loaded  # (the probe itself works)
    assert not {"ssl", "_ssl", "hmac", "_hashlib"} & loaded


#: What a control server loads only when a request needs it, with that request.
NOT_WITH_CONTROL = {
    "email": "a multipart form (control.params)",
    "importlib.resources": "the first page asset served (control.site)",
    "platform": "GET /version (control.api)",
    "subprocess": "ctypes.util, through costs_darwin",
    "tempfile": "ctypes.util, through costs_darwin",
}


def test_a_control_server_loads_what_only_some_requests_need_with_them() -> None:
    loaded = _loaded_by("taskforce.control.server")
    assert "taskforce.costs" in loaded  # (the probe itself works)
    wrong = {name: why for name, why in NOT_WITH_CONTROL.items() if name in loaded}
    if os.path.isdir("/proc/self"):
        # costs_darwin reads libproc where there is no /proc: here, never.
        assert "taskforce.costs_darwin" not in loaded
    assert not wrong, f"loaded with the control server, but only needed by: {wrong}"


#: What a running daemon never loads, though the stdlib calls it makes would
#: by default (or, for typing, any module it imports late), with the call.
NOT_WHILE_RUNNING = {
    "shutil": "argparse's formatter, for the terminal's width (with bz2, lzma and zlib)",
    "encodings.idna": "socket.gethostbyaddr given a str (with unicodedata and stringprep)",
    # 0.45 MiB of a daemon's memory: our modules import it only for mypy,
    # under ``TYPE_CHECKING = False`` / ``if TYPE_CHECKING:``
    "typing": "annotations only; the control socket's HTTP library (h11) loads it",
}


def test_a_running_daemon_loads_none_of_what_stdlib_defaults_would(tmp_path) -> None:
    # Imports made while running, not at import: parsing the command line,
    # looking up the host's names, starting and stopping a task.
    config = tmp_path / "one.conf"
    config.write_text("tasks: {one: {commands: {start: [sleep, '60']}}}\n")
    out = tmp_path / "modules"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write('\\n'.join(sys.modules)))\n"
        f"sys.argv = ['taskforce', '-e', '-f', {str(config)!r}, '-r', '-', '--expires', '1']\n"
        "from taskforce.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "one[0] started" in done.stderr  # (the probe itself works)
    loaded = set(out.read_text().split())
    wrong = {name: why for name, why in NOT_WHILE_RUNNING.items() if name in loaded}
    assert not wrong, f"loaded by a running daemon, though never needed: {wrong}"


def test_each_named_tuple_mypy_reads_is_the_one_that_runs() -> None:
    # Without typing, a NamedTuple is written twice: the class mypy reads,
    # under ``if TYPE_CHECKING:``, and the collections.namedtuple that runs.
    import ast
    import importlib
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "taskforce"
    checked = set()
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
                continue
            for cls in node.body:
                if not (
                    isinstance(cls, ast.ClassDef)
                    and [ast.unparse(base) for base in cls.bases] == ["NamedTuple"]
                ):
                    continue
                fields = [item for item in cls.body if isinstance(item, ast.AnnAssign)]
                names = tuple(ast.unparse(item.target) for item in fields)
                defaults = {
                    ast.unparse(item.target): ast.literal_eval(item.value)
                    for item in fields
                    if item.value is not None
                }
                runs = getattr(importlib.import_module(module), cls.name)
                assert runs.__module__ == module, cls.name
                assert runs._fields == names, f"{module}.{cls.name}"
                assert runs._field_defaults == defaults, f"{module}.{cls.name}"
                checked.add(f"{module}.{cls.name}")
    assert {"taskforce.core.sockets.SocketSpec", "taskforce.recent.Block"} <= checked
