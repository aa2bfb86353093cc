"""The file watchers against real files: every backend this machine has.

Each test drives a watcher the way the daemon does -- a selector, a select
timeout from ``next_deadline``, ``take_changes`` after every wake-up -- and
waits for a condition with a deadline; nothing is asserted after a fixed
sleep.  "Nothing else was reported" is checked with a sentinel: a file
changed *after* the act, whose report can only come once every earlier
event has been flushed.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import taskforce.watch
from taskforce.core.effects import Watch
from taskforce.watch import Watcher, make_watcher
from taskforce.watch.targets import python_entry, walk

HAS_INOTIFY = taskforce.watch.has_inotify()
HAS_KQUEUE = hasattr(select, "kqueue")
HAS_PROC = os.path.isdir("/proc/self/fdinfo")

BACKEND_PARAMS = [
    pytest.param(
        "inotify", marks=pytest.mark.skipif(not HAS_INOTIFY, reason="inotify is Linux only")
    ),
    pytest.param("kqueue", marks=pytest.mark.skipif(not HAS_KQUEUE, reason="no kqueue here")),
    pytest.param("poll"),
]

#: How long any single expectation may take; generous for loaded CI hosts.
PATIENCE = 10.0


class Driver:
    """Runs a watcher like the daemon's loop and collects what it reports."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.selector = selectors.DefaultSelector()
        watcher.attach(self.selector)
        self.changes: list[tuple[str, str]] = []

    def turn(self, longest: float) -> None:
        now = time.monotonic()
        due = self.watcher.next_deadline()
        timeout = longest if due is None else min(longest, max(0.0, due - now))
        for key, _ in self.selector.select(timeout):
            key.data()
        self.changes.extend(self.watcher.take_changes(time.monotonic()))

    def run_for(self, seconds: float) -> None:
        """Keep the loop turning for ``seconds`` (stands in for a sleep)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.turn(left)

    def wait_for(self, condition: Callable[[], bool], what: str = "condition") -> None:
        deadline = time.monotonic() + PATIENCE
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; reported: {self.changes}")
            self.turn(left)

    def wait_change(self, key: str, path: str | Path) -> None:
        """Wait for (key, path) to be reported, then forget what was seen."""
        wanted = (key, str(path))
        self.wait_for(lambda: wanted in self.changes, f"{wanted}")
        self.changes.clear()

    def quiet_except(self, sentinel: Path) -> list[tuple[str, str]]:
        """Touch ``sentinel`` (watched as key "sentinel"); return what came first."""
        write(sentinel, f"sentinel {time.monotonic_ns()}\n")
        self.wait_for(lambda: ("sentinel", str(sentinel)) in self.changes, "the sentinel")
        seen = [change for change in self.changes if change[0] != "sentinel"]
        self.changes.clear()
        return seen

    def close(self) -> None:
        self.watcher.close()
        self.selector.close()


def write(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def replace(path: Path, text: str) -> None:
    """Write a temporary file and rename it over ``path`` (vim, sed -i, rsync)."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temporary, text)
    os.replace(temporary, path)


def build(backend: str) -> Watcher:
    return make_watcher(backend, settle=0.1, poll_interval=0.05)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def driver(backend: str) -> Iterator[Driver]:
    instance = Driver(build(backend))
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def sentinel(tmp_path: Path, driver: Driver) -> Path:
    path = tmp_path / "sentinel" / "file"
    path.parent.mkdir()
    write(path, "start\n")
    driver.watcher.watch(Watch("sentinel", "file", (str(path),)))
    return path


def inotify_watch_count(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        return sum(1 for line in info if line.startswith("inotify"))


def open_fd_count() -> int:
    # /dev/fd where there is no /proc (macOS: the kqueue backend's leaks)
    return len(os.listdir("/proc/self/fd" if HAS_PROC else "/dev/fd"))


# ------------------------------------------------------------ plain files


def test_write_in_place(driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    with open(path, "a") as handle:
        handle.write("two\n")
    driver.wait_change("k", path)
    write(path, "three and more\n")
    driver.wait_change("k", path)


def test_replace_by_rename(driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    replace(path, "two, renamed into place\n")
    driver.wait_change("k", path)
    # The new inode is watched too: a second replacement is seen as well.
    replace(path, "three\n")
    driver.wait_change("k", path)
    write(path, "four, in place\n")
    driver.wait_change("k", path)


def test_delete_then_recreate(driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    path.unlink()
    driver.wait_change("k", path)
    write(path, "back again\n")
    driver.wait_change("k", path)
    write(path, "and changed in place\n")
    driver.wait_change("k", path)


def test_file_that_does_not_exist_yet(driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "later.conf"
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    write(path, "here now\n")
    driver.wait_change("k", path)
    write(path, "changed\n")
    driver.wait_change("k", path)


def test_parent_directory_that_does_not_exist_yet(
    driver: Driver, tmp_path: Path, sentinel: Path
) -> None:
    top = tmp_path / "a"
    path = top / "b" / "c" / "app.conf"
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    # Directories appearing are not changes of the file.
    (top / "b").mkdir(parents=True)
    assert driver.quiet_except(sentinel) == []
    (top / "b" / "c").mkdir()
    write(path, "here now\n")
    driver.wait_change("k", path)
    write(path, "changed\n")
    driver.wait_change("k", path)
    # The whole tree goes and comes back.
    shutil.rmtree(top)
    driver.wait_change("k", path)
    path.parent.mkdir(parents=True)
    write(path, "back\n")
    driver.wait_change("k", path)


def test_relative_path_reported_as_given(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rel.conf", "one\n")
    driver.watcher.watch(Watch("k", "file", ("rel.conf",)))
    # Stored absolute: a later change of directory does not matter.
    monkeypatch.chdir("/")
    write(tmp_path / "rel.conf", "two\n")
    driver.wait_change("k", "rel.conf")


def test_configmap_symlink_swap(driver: Driver, tmp_path: Path) -> None:
    """Kubernetes: config.yaml -> ..data/config.yaml, ..data -> ..<version>."""
    volume = tmp_path / "configmap"
    volume.mkdir()

    def publish(version: str, text: str) -> Path:
        directory = volume / f"..{version}"
        directory.mkdir()
        write(directory / "config.yaml", text)
        os.symlink(directory.name, volume / "..data_tmp")
        os.replace(volume / "..data_tmp", volume / "..data")
        return directory

    first = publish("2024_01_01", "a: 1\n")
    os.symlink("..data/config.yaml", volume / "config.yaml")
    path = volume / "config.yaml"
    driver.watcher.watch(Watch("k", "file", (str(path),)))

    second = publish("2024_01_02", "a: 2\n")
    shutil.rmtree(first)
    driver.wait_change("k", path)
    # The watch followed the swap: the new target is watched now.
    write(second / "config.yaml", "a: 3, edited where it lives\n")
    driver.wait_change("k", path)
    third = publish("2024_01_03", "a: 4\n")
    shutil.rmtree(second)
    driver.wait_change("k", path)
    write(third / "config.yaml", "a: 5\n")
    driver.wait_change("k", path)


def test_burst_is_one_change(driver: Driver, tmp_path: Path, sentinel: Path) -> None:
    path = tmp_path / "busy.conf"
    write(path, "start\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    # The loop keeps running during the burst, as the daemon's does: it
    # wakes up for every event and asks for changes after each.
    started = time.monotonic()
    for number in range(10):
        write(path, f"write {number} " + "x" * number + "\n")
        driver.run_for(0.004)
    if time.monotonic() - started > 0.09:
        pytest.skip("the host was too slow to write a 50 ms burst")
    seen = driver.quiet_except(sentinel)
    assert seen == [("k", str(path))]


def test_no_change_reported_for_reads_and_chmod(
    driver: Driver, tmp_path: Path, sentinel: Path
) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    with open(path) as handle:
        handle.read()
    path.chmod(0o600)
    assert driver.quiet_except(sentinel) == []
    # But a touch changes mtime: that is a change.
    later = time.time() + 5
    os.utime(path, (later, later))
    driver.wait_change("k", path)


def test_shared_path_and_unwatch(driver: Driver, tmp_path: Path, sentinel: Path) -> None:
    path = tmp_path / "shared.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("a", "file", (str(path),)))
    driver.watcher.watch(Watch("b", "file", (str(path),)))
    write(path, "two\n")
    driver.wait_for(lambda: {("a", str(path)), ("b", str(path))} <= set(driver.changes))
    driver.changes.clear()
    driver.watcher.unwatch("a")
    write(path, "three\n")
    assert driver.quiet_except(sentinel) == [("b", str(path))]
    driver.watcher.unwatch("b")
    write(path, "four\n")
    assert driver.quiet_except(sentinel) == []


def test_watch_replaces_the_key(driver: Driver, tmp_path: Path, sentinel: Path) -> None:
    old, new = tmp_path / "old.conf", tmp_path / "new.conf"
    write(old, "old\n")
    write(new, "new\n")
    driver.watcher.watch(Watch("k", "file", (str(old),)))
    driver.watcher.watch(Watch("k", "file", (str(new),)))
    write(old, "old changed\n")
    write(new, "new changed\n")
    assert driver.quiet_except(sentinel) == [("k", str(new))]


def test_idle_watcher_has_no_deadline(backend: str, tmp_path: Path) -> None:
    watcher = build(backend)
    try:
        assert watcher.next_deadline() is None
        path = tmp_path / "f"
        watcher.watch(Watch("k", "file", (str(path),)))
        if backend == "poll":
            assert watcher.poll_interval == 0.05
            assert watcher.next_deadline() is not None
        else:
            assert watcher.poll_interval is None
            assert watcher.next_deadline() is None
        watcher.unwatch("k")
        assert watcher.next_deadline() is None
    finally:
        watcher.close()


# --------------------------------------------------------------- resources


@pytest.mark.skipif(not (HAS_INOTIFY and HAS_PROC), reason="needs inotify and /proc")
def test_unwatch_releases_inotify_watches(tmp_path: Path) -> None:
    watcher = build("inotify")
    driver = Driver(watcher)
    try:
        (fd,) = [key.fd for key in driver.selector.get_map().values()]
        assert inotify_watch_count(fd) == 0
        volume = tmp_path / "cm"
        (volume / "..v1").mkdir(parents=True)
        write(volume / "..v1" / "c.yaml", "x\n")
        os.symlink("..v1", volume / "..data")
        os.symlink("..data/c.yaml", volume / "c.yaml")
        for number in range(5):
            (tmp_path / f"d{number}").mkdir()
            watcher.watch(Watch(f"k{number}", "file", (str(tmp_path / f"d{number}" / "f"),)))
        watcher.watch(Watch("missing", "file", (str(tmp_path / "no" / "such" / "f"),)))
        watcher.watch(Watch("cm", "file", (str(volume / "c.yaml"),)))
        # d0..d4, tmp_path (for "no"), cm and cm/..v1.
        assert inotify_watch_count(fd) == 8
        for key in ("k0", "k1", "k2", "k3", "k4", "missing", "cm"):
            watcher.unwatch(key)
        assert inotify_watch_count(fd) == 0
    finally:
        driver.close()


def test_no_descriptor_leak(backend: str, tmp_path: Path) -> None:
    for number in range(7):
        (tmp_path / f"d{number}").mkdir()
        write(tmp_path / f"d{number}" / "f", "x\n")
    driver = Driver(build(backend))
    try:
        before = open_fd_count()
        for cycle in range(200):
            key = f"k{cycle % 3}"
            paths = (
                str(tmp_path / f"d{cycle % 7}" / "f"),
                str(tmp_path / f"gone{cycle % 5}" / "sub" / "f"),
            )
            driver.watcher.watch(Watch(key, "file", paths))
            if cycle % 2:
                driver.watcher.unwatch(key)
        for key in ("k0", "k1", "k2"):
            driver.watcher.unwatch(key)
        assert open_fd_count() == before
        if backend == "inotify":
            (fd,) = [key.fd for key in driver.selector.get_map().values()]
            assert inotify_watch_count(fd) == 0
    finally:
        driver.close()
    before = open_fd_count()
    for _ in range(50):
        instance = Driver(build(backend))
        instance.watcher.watch(Watch("k", "file", (str(tmp_path / "d0" / "f"),)))
        instance.close()
    assert open_fd_count() == before


# ------------------------------------------------------- executable, python


def make_program(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> None:
    write(path, text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_executable_resolved_on_path(driver: Driver, tmp_path: Path) -> None:
    empty, tools = tmp_path / "empty", tmp_path / "tools"
    empty.mkdir()
    tools.mkdir()
    make_program(tools / "mytool")
    search = f"{empty}{os.pathsep}{tools}"
    driver.watcher.watch(Watch("self", "executable", ("mytool",), search))
    assert list(driver.watcher.watched()["self"].values()) == [str(tools / "mytool")]
    replace(tools / "mytool", "#!/bin/sh\nexit 1\n")
    driver.wait_change("self", tools / "mytool")


def test_executable_that_appears_later(driver: Driver, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    search = f"{first}{os.pathsep}{second}"
    driver.watcher.watch(Watch("self", "executable", ("latertool",), search))
    make_program(second / "latertool")
    driver.wait_change("self", second / "latertool")
    # Found now: only the program itself stays watched.
    assert list(driver.watcher.watched()["self"].values()) == [str(second / "latertool")]
    make_program(second / "latertool", "#!/bin/sh\necho new\n")
    driver.wait_change("self", second / "latertool")


def test_executable_with_a_slash_is_used_as_is(driver: Driver, tmp_path: Path) -> None:
    program = tmp_path / "bin" / "tool"
    program.parent.mkdir()
    make_program(program)
    driver.watcher.watch(Watch("self", "executable", (str(program),), "/nonexistent"))
    make_program(program, "#!/bin/sh\nexit 3\n")
    driver.wait_change("self", program)


def test_python_script_and_its_modules(driver: Driver, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    script, helper, second = app / "main.py", app / "helper.py", app / "second.py"
    write(helper, "VALUE = 1\n")
    write(script, "import json\nimport helper\n\nprint(helper.VALUE)\n")
    argv = (sys.executable, "-u", str(script))
    driver.watcher.watch(Watch("py", "python", argv))
    watched = driver.watcher.watched()["py"]
    assert str(helper) in watched.values()
    # The standard library is part of the installation: not watched.
    assert not any(path.endswith(f"{os.sep}json{os.sep}__init__.py") for path in watched)

    write(helper, "VALUE = 22\n")
    driver.wait_change("py", helper)

    write(second, "OTHER = 1\n")
    write(script, "import helper\nimport second\n\nprint(helper.VALUE, second.OTHER)\n")
    driver.wait_change("py", script)
    assert str(second) in driver.watcher.watched()["py"].values()
    write(second, "OTHER = 333\n")
    driver.wait_change("py", second)


def test_python_module_that_appears_after_the_import(driver: Driver, tmp_path: Path) -> None:
    script, later = tmp_path / "main.py", tmp_path / "later.py"
    write(script, "import later\n")
    driver.watcher.watch(Watch("py", "python", ("python3", str(script))))
    write(later, "X = 1\n")
    driver.wait_change("py", later)
    write(later, "X = 22\n")
    driver.wait_change("py", later)


def test_python_script_with_a_syntax_error_keeps_its_modules(
    driver: Driver, tmp_path: Path
) -> None:
    script, helper = tmp_path / "main.py", tmp_path / "helper.py"
    write(helper, "X = 1\n")
    write(script, "import helper\n")
    driver.watcher.watch(Watch("py", "python", (str(script),)))
    write(script, "import helper\ndef broken(:\n")
    driver.wait_change("py", script)
    assert str(helper) in driver.watcher.watched()["py"].values()
    write(helper, "X = 22\n")
    driver.wait_change("py", helper)


def test_python_module_run_with_dash_m(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    write(package / "__init__.py", "")
    write(package / "util.py", "X = 1\n")
    write(package / "serve.py", "from . import util\n")
    monkeypatch.chdir(tmp_path)
    driver.watcher.watch(Watch("py", "python", ("python3", "-m", "pkg.serve")))
    assert set(driver.watcher.watched()["py"]) >= {
        str(package / "serve.py"),
        str(package / "util.py"),
        str(package / "__init__.py"),
    }
    write(package / "util.py", "X = 22\n")
    driver.wait_change("py", package / "util.py")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("/srv/app.py", "--port", "80"), ("script", "/srv/app.py")),
        (("python3", "-u", "main.py", "x.py"), ("script", "main.py")),
        (("python3.11", "-W", "ignore", "-X", "dev", "main.py"), ("script", "main.py")),
        (("/usr/bin/python", "-Bu", "run"), ("script", "run")),
        (("python", "-m", "pkg.mod", "a.py"), ("module", "pkg.mod")),
        (("python", "-um", "pkg"), ("module", "pkg")),
        (("python", "-c", "import x", "tool.py"), ("script", "tool.py")),
        (("python", "-"), None),
        (("python",), None),
    ],
)
def test_python_entry(argv: tuple[str, ...], expected: tuple[str, str] | None) -> None:
    assert python_entry(argv) == expected


def test_walk_records_the_link_chain(tmp_path: Path) -> None:
    volume = tmp_path / "cm"
    (volume / "..v1").mkdir(parents=True)
    write(volume / "..v1" / "c.yaml", "x\n")
    os.symlink("..v1", volume / "..data")
    os.symlink("..data/c.yaml", volume / "c.yaml")
    chain = walk(str(volume / "c.yaml"))
    assert chain.final == (str(volume / "..v1"), "c.yaml")
    assert chain.entries == (
        (str(volume), "c.yaml"),
        (str(volume), "..data"),
        (str(volume / "..v1"), "c.yaml"),
    )
    missing = walk(str(tmp_path / "no" / "such" / "f"))
    assert missing.entries == ((str(tmp_path), "no"),)
    assert missing.final is None


# ----------------------------------------------------------------- choice


def test_choice_explicit_env_and_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TASKFORCE_WATCHER", "poll")
    watcher = make_watcher()
    assert watcher.backend == "poll" and watcher.poll_interval == 1.0
    watcher.close()
    if HAS_INOTIFY:
        watcher = make_watcher("inotify")
        assert watcher.backend == "inotify"
        watcher.close()
    with pytest.raises(ValueError):
        make_watcher("fsevents")

    monkeypatch.setenv("TASKFORCE_WATCHER", "bogus")
    watcher = make_watcher()
    assert watcher.backend in ("inotify", "kqueue", "poll")
    watcher.close()

    monkeypatch.delenv("TASKFORCE_WATCHER")
    # A host with neither (the choice asks the libc and select, not the
    # platform's name).
    monkeypatch.setattr(taskforce.watch, "has_inotify", lambda: False)
    monkeypatch.delattr(select, "kqueue", raising=False)
    with caplog.at_level(logging.WARNING, logger="taskforce"):
        watcher = make_watcher()
    assert watcher.backend == "poll"
    assert "polling" in caplog.text
    watcher.close()


def test_kqueue_module_imports_everywhere() -> None:
    from taskforce.watch import kqueue

    assert kqueue.AVAILABLE == HAS_KQUEUE
    if not HAS_KQUEUE:
        with pytest.raises(OSError):
            kqueue.KqueueWatcher()
        # Asked for where it cannot work: polling, with a warning.
        watcher = make_watcher("kqueue")
        assert watcher.backend == "poll"
        watcher.close()


@pytest.mark.skipif(not HAS_INOTIFY, reason="inotify is Linux only")
def test_directory_appearing_while_the_watch_is_added(tmp_path: Path) -> None:
    """A directory created after the walk but before its parent is watched
    sends no event; walking again once the watch is in place finds it."""
    from taskforce.watch.inotify import InotifyWatcher

    watcher = build("inotify")
    assert isinstance(watcher, InotifyWatcher)
    system = watcher._sys
    real_add_watch = system.add_watch
    raced: list[str] = []

    def racing_add_watch(fd: int, path: str, mask: int) -> int:
        if path == str(tmp_path) and not raced:
            raced.append(path)
            (tmp_path / "a" / "b").mkdir(parents=True)
        return real_add_watch(fd, path, mask)

    system.add_watch = racing_add_watch  # type: ignore[method-assign]
    driver = Driver(watcher)
    try:
        target = tmp_path / "a" / "b" / "f"
        watcher.watch(Watch("k", "file", (str(target),)))
        assert raced
        write(target, "made in a directory nobody saw appear\n")
        driver.wait_change("k", target)
    finally:
        driver.close()


def test_directory_swapped_by_rename(driver: Driver, tmp_path: Path, sentinel: Path) -> None:
    """A release directory renamed into place: the file under it changed."""
    current = tmp_path / "current"
    current.mkdir()
    write(current / "app.conf", "v1\n")
    path = current / "app.conf"
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    staged = tmp_path / "staged"
    staged.mkdir()
    write(staged / "app.conf", "v2\n")
    current.rename(tmp_path / "old")
    staged.rename(current)
    driver.wait_change("k", path)
    # The watch is on the new directory, not on the one moved away.
    write(tmp_path / "old" / "app.conf", "old one edited\n")
    assert driver.quiet_except(sentinel) == []
    write(path, "v3\n")
    driver.wait_change("k", path)


@pytest.mark.skipif(not HAS_INOTIFY, reason="inotify is Linux only")
def test_inotify_queue_overflow_reports_everything(tmp_path: Path) -> None:
    from taskforce.watch import inotify

    watcher = build("inotify")
    assert isinstance(watcher, inotify.InotifyWatcher)
    driver = Driver(watcher)
    try:
        for name in ("a", "b"):
            write(tmp_path / name, "x\n")
            watcher.watch(Watch(name, "file", (str(tmp_path / name),)))
        reshaped: set[str] = set()
        watcher._dispatch(-1, inotify.IN_Q_OVERFLOW, "", time.monotonic(), reshaped)
        watcher._follow(sorted(reshaped))
        driver.wait_for(lambda: len(driver.changes) == 2, "both paths")
        assert driver.changes == [("a", str(tmp_path / "a")), ("b", str(tmp_path / "b"))]
        # Watching still works after the watches were renewed.
        driver.changes.clear()
        write(tmp_path / "b", "y, changed\n")
        driver.wait_change("b", tmp_path / "b")
        assert watcher.watch_count() == 1
    finally:
        driver.close()
