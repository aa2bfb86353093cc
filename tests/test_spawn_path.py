"""The fast spawn path (``posix_spawn`` of the ``sh`` shim): what it looks up,
what it leaves open, and that a remembered lookup never starts the wrong
program.  Real processes, each killed and reaped by the test that started it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import wait_for

from taskforce import process

pytestmark = pytest.mark.skipif(not process.FAST_SPAWN, reason="no posix_spawn here")


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids to kill and reap at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def program(folder: Path, name: str, says: str, out: Path) -> None:
    """An executable ``folder/name`` that writes ``says`` to ``out`` and exits."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {says} > {out}\n")
    path.chmod(0o755)


def run(name: str, path: str, started: list[int]) -> int:
    env = {"PATH": path}
    pid, report = process.start([name], env)
    started.append(pid)
    # The exec already happened: no pipe to read, nothing held open for it.
    assert report is None
    return pid


def test_a_start_holds_no_descriptor(tmp_path: Path, started: list[int]) -> None:
    out = tmp_path / "out"
    program(tmp_path / "bin", "tfprog", "ran", out)
    before = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    run("tfprog", str(tmp_path / "bin"), started)
    wait_for(lambda: out.exists() and out.read_text() == "ran\n", what="the program's output")
    if before is not None:
        assert sorted(os.listdir("/proc/self/fd")) == before


def run_once_then_remove(tmp_path: Path, started: list[int]) -> tuple[Path, str]:
    """``tfprog`` in ``bin`` run once (its lookup remembered), then removed;
    the file it writes and the PATH it was found on."""
    out = tmp_path / "out"
    program(tmp_path / "bin", "tfprog", "ran", out)
    path = str(tmp_path / "bin")
    run("tfprog", path, started)
    wait_for(lambda: out.exists(), what="the first run")
    (tmp_path / "bin" / "tfprog").unlink()
    return out, path


def test_a_program_removed_after_a_start_is_reported_missing(
    tmp_path: Path, started: list[int]
) -> None:
    out, path = run_once_then_remove(tmp_path, started)
    with pytest.raises(process.SpawnError, match="exec 'tfprog': No such file"):
        run("tfprog", path, started)
    # Put back elsewhere on PATH: found there.
    out.unlink()
    program(tmp_path / "later", "tfprog", "later", out)
    run("tfprog", f"{path}:{tmp_path / 'later'}", started)
    wait_for(lambda: out.exists() and out.read_text() == "later\n", what="the later one")


def test_a_program_put_earlier_on_path_is_the_one_that_runs(
    tmp_path: Path, started: list[int]
) -> None:
    out = tmp_path / "out"
    program(tmp_path / "late", "tfprog", "late", out)
    path = f"{tmp_path / 'early'}:{tmp_path / 'late'}"
    run("tfprog", path, started)
    wait_for(lambda: out.exists() and out.read_text() == "late\n", what="the late one")
    out.unlink()
    # Now one of the same name earlier on PATH: it shadows the one found before.
    program(tmp_path / "early", "tfprog", "early", out)
    run("tfprog", path, started)
    wait_for(lambda: out.exists() and out.read_text() == "early\n", what="the early one")


def test_a_program_that_became_a_folder_is_missing(tmp_path: Path, started: list[int]) -> None:
    _, path = run_once_then_remove(tmp_path, started)
    (tmp_path / "bin" / "tfprog").mkdir()
    with pytest.raises(process.SpawnError, match="No such file"):
        run("tfprog", path, started)


def test_the_lookup_finds_what_shutil_which_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)
    first, second, empty = tmp_path / "first", tmp_path / "second", tmp_path / "empty"
    for folder in (first, second, empty):
        folder.mkdir()
    for folder, name, mode in [
        (first, "plain", 0o644),  # not executable: skipped
        (second, "plain", 0o755),
        (first, "both", 0o755),
        (second, "both", 0o755),
        (tmp_path, "here", 0o755),  # found through an empty PATH entry only
    ]:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(mode)
    (first / "dir").mkdir()  # a folder is never the program
    (second / "dir").write_text("#!/bin/sh\n")
    (second / "dir").chmod(0o755)
    paths = [
        f"{first}:{second}",
        f"{second}:{first}",
        f"{first}:{first}:{empty}",
        f":{first}",
        f"{empty}",
        "",
        os.defpath,
    ]
    names = ["plain", "both", "here", "dir", "missing", "sh", str(second / "plain"), "first/both"]
    for path in paths:
        for name in names:
            assert process._which(name, path) == shutil.which(name, path=path), (name, path)
