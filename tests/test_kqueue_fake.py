"""The kqueue backend (``taskforce.watch.kqueue``) on any host, under a fake
``select.kqueue``.

The real backend only runs on macOS and the BSDs (``test_watch.py`` drives
it there against real files).  Here its module is loaded afresh as if on
macOS, with a test double standing in for ``select.kqueue``: it records
every kevent registration (which descriptor, which filter, flags and
fflags, and which file that descriptor has open) and delivers the events a
test gives it, as the kernel would, through a readable descriptor.  The
files are real; only the kernel's part is played by the test.  What this
cannot prove -- that macOS sends these events for these acts -- is for the
macOS CI job.
"""

from __future__ import annotations

import importlib.util
import os
import select
import selectors
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from test_watch import Driver, open_fd_count, replace, write

import taskforce.watch
from taskforce.core.effects import Watch

#: The constants as macOS's <sys/event.h> has them.
KQ = {
    "KQ_FILTER_VNODE": -4,
    "KQ_EV_ADD": 0x1,
    "KQ_EV_DELETE": 0x2,
    "KQ_EV_CLEAR": 0x20,
    "KQ_NOTE_DELETE": 0x1,
    "KQ_NOTE_WRITE": 0x2,
    "KQ_NOTE_EXTEND": 0x4,
    "KQ_NOTE_ATTRIB": 0x8,
    "KQ_NOTE_LINK": 0x10,
    "KQ_NOTE_RENAME": 0x20,
    "KQ_NOTE_REVOKE": 0x40,
}
WRITE, DELETE, RENAME = KQ["KQ_NOTE_WRITE"], KQ["KQ_NOTE_DELETE"], KQ["KQ_NOTE_RENAME"]
ATTRIB, EXTEND = KQ["KQ_NOTE_ATTRIB"], KQ["KQ_NOTE_EXTEND"]


class FakeKevent:
    """``select.kevent``: a change to register, or an event delivered."""

    def __init__(self, ident: int, filter: int = 0, flags: int = 0, fflags: int = 0) -> None:
        self.ident, self.filter, self.flags, self.fflags = ident, filter, flags, fflags


@dataclass
class Registration:
    fd: int
    filter: int
    flags: int
    fflags: int
    #: (st_dev, st_ino) of what the descriptor had open when registered
    node: tuple[int, int]


class FakeKqueue:
    """``select.kqueue``: records registrations, delivers the test's events."""

    #: every instance made, newest last (the watcher makes one)
    made: list[FakeKqueue] = []

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self.registrations: dict[int, Registration] = {}
        self.queue: list[FakeKevent] = []
        self.closed = False
        FakeKqueue.made.append(self)

    def fileno(self) -> int:
        return self._read

    def control(
        self, changes: list[FakeKevent] | None, max_events: int, timeout: float | None = None
    ) -> list[FakeKevent]:
        assert not self.closed, "kevent on a closed kqueue"
        for change in changes or ():
            info = os.fstat(change.ident)  # EBADF, as the kernel says, on a closed fd
            if change.flags & KQ["KQ_EV_ADD"]:
                self.registrations[change.ident] = Registration(
                    change.ident,
                    change.filter,
                    change.flags,
                    change.fflags,
                    (info.st_dev, info.st_ino),
                )
            elif change.flags & KQ["KQ_EV_DELETE"]:
                self.registrations.pop(change.ident, None)
        if max_events == 0:
            return []
        taken, self.queue = self.queue[:max_events], self.queue[max_events:]
        if not self.queue:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass
        return taken

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._read)
            os.close(self._write)

    # ------------------------------------------------ the test's side

    def live(self) -> dict[int, Registration]:
        """Registrations still in force: closing a descriptor removes its
        kevent (the kernel does that), and a reused number is another file."""
        for fd, reg in list(self.registrations.items()):
            try:
                info = os.fstat(fd)
            except OSError:
                del self.registrations[fd]
                continue
            if (info.st_dev, info.st_ino) != reg.node:
                del self.registrations[fd]
        return self.registrations

    def watched(self) -> set[tuple[int, int]]:
        return {reg.node for reg in self.live().values()}

    def deliver(self, node: tuple[int, int] | str | Path, fflags: int) -> int:
        """Queue ``fflags`` for every registration of ``node`` (a path, or the
        (st_dev, st_ino) of a file gone from its name); how many."""
        if not isinstance(node, tuple):
            info = os.stat(node)
            node = (info.st_dev, info.st_ino)
        hits = [fd for fd, reg in sorted(self.live().items()) if reg.node == node]
        for fd in hits:
            self.queue.append(FakeKevent(fd, KQ["KQ_FILTER_VNODE"], 0, fflags))
        if hits:
            os.write(self._write, b"!")
        return len(hits)


def identity(path: str | Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """Resolved: on macOS the temporary folder is reached through the ``/var``
    symlink, and the folder holding a symlink on the way is watched too."""
    return tmp_path.resolve()


@pytest.fixture
def kqueue(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``taskforce.watch.kqueue`` loaded as if on macOS, over the fake."""
    monkeypatch.setattr(sys, "platform", "darwin")
    for name, value in KQ.items():
        monkeypatch.setattr(select, name, value, raising=False)
    monkeypatch.setattr(select, "kqueue", FakeKqueue, raising=False)
    monkeypatch.setattr(select, "kevent", FakeKevent, raising=False)
    source = Path(taskforce.watch.__file__).with_name("kqueue.py")
    spec = importlib.util.spec_from_file_location("taskforce.watch._kqueue_on_a_fake", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.AVAILABLE
    return module


class FakeDriver(Driver):
    """test_watch's loop, with the fake kernel at hand."""

    kq: FakeKqueue

    def deliver(self, node: tuple[int, int] | str | Path, fflags: int) -> None:
        assert self.kq.deliver(node, fflags), f"nothing registered for {node}"


@pytest.fixture
def driver(kqueue: ModuleType) -> Iterator[FakeDriver]:
    instance = FakeDriver(kqueue.KqueueWatcher(settle=0.05))
    instance.kq = FakeKqueue.made[-1]
    try:
        yield instance
    finally:
        instance.close()


def changed(driver: FakeDriver, key: str, path: Path) -> None:
    driver.wait_change(key, str(path))


# ------------------------------------------------------------------ tests


def test_a_file_and_its_directory_are_registered_as_vnodes(
    driver: FakeDriver, kqueue: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    live = driver.kq.live()
    assert {reg.node for reg in live.values()} == {identity(tmp_path), identity(path)}
    for reg in live.values():
        assert reg.filter == KQ["KQ_FILTER_VNODE"]
        assert reg.flags == KQ["KQ_EV_ADD"] | KQ["KQ_EV_CLEAR"]  # edge-triggered
        assert reg.fflags == kqueue.VNODE_MASK
        assert reg.fflags & (WRITE | DELETE | RENAME | EXTEND | ATTRIB) == (
            WRITE | DELETE | RENAME | EXTEND | ATTRIB
        )


def watch_sentinel(driver: FakeDriver, tmp_path: Path) -> Path:
    """A watched file whose change, made last, shows the events before it were read."""
    sentinel = tmp_path / "sentinel"
    write(sentinel, "s\n")
    driver.watcher.watch(Watch("sentinel", "file", (str(sentinel),)))
    return sentinel


def assert_unchanged_by_then(driver: FakeDriver, sentinel: Path, change: tuple[str, str]) -> None:
    """Once the sentinel's change is reported, ``change`` has not been."""
    write(sentinel, "t\n")
    driver.deliver(sentinel, WRITE)
    driver.wait_for(lambda: ("sentinel", str(sentinel)) in driver.changes, "the sentinel")
    assert change not in driver.changes


def test_a_write_in_place_is_reported_once(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    sentinel = watch_sentinel(driver, tmp_path)
    with open(path, "a") as handle:
        handle.write("two\n")
    driver.deliver(path, WRITE | EXTEND)
    driver.deliver(path, WRITE)  # a burst: one change
    changed(driver, "k", path)
    assert_unchanged_by_then(driver, sentinel, ("k", str(path)))


def test_an_event_that_changed_nothing_is_dropped(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    sentinel = watch_sentinel(driver, tmp_path)
    driver.deliver(path, ATTRIB)  # a touch of attributes: the signature is the same
    driver.deliver(tmp_path, WRITE)  # an entry of the directory changed: not ours
    assert_unchanged_by_then(driver, sentinel, ("k", str(path)))


def test_replace_by_rename_reopens_the_new_file(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    old = identity(path)
    before = open_fd_count()
    replace(path, "two\n")  # what vim, sed -i and rsync do
    # The kernel: the old file lost its name, and the directory changed.
    driver.deliver(old, DELETE)
    driver.deliver(tmp_path, WRITE)
    changed(driver, "k", path)
    assert identity(path) in driver.kq.watched(), "the new file is watched"
    assert old not in driver.kq.watched(), "the old one is let go"
    assert open_fd_count() == before, "one descriptor for one file"
    # And writes to the new file are seen.
    with open(path, "a") as handle:
        handle.write("three\n")
    driver.deliver(path, WRITE)
    changed(driver, "k", path)


def test_a_file_that_does_not_exist_yet(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "later.conf"
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    assert driver.kq.watched() == {identity(tmp_path)}, "its directory only"
    write(path, "now\n")
    driver.deliver(tmp_path, WRITE)
    changed(driver, "k", path)
    assert identity(path) in driver.kq.watched()


def test_delete_then_recreate(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    old = identity(path)
    path.unlink()
    driver.deliver(old, DELETE)
    driver.deliver(tmp_path, WRITE)
    changed(driver, "k", path)
    assert driver.kq.watched() == {identity(tmp_path)}
    write(path, "again\n")
    driver.deliver(tmp_path, WRITE)
    changed(driver, "k", path)
    assert identity(path) in driver.kq.watched()


def test_a_symlink_swap_follows_the_new_target(driver: FakeDriver, tmp_path: Path) -> None:
    """A ConfigMap: ``..data`` is a symlink swapped by rename to a new folder."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    for folder, text in ((first, "one\n"), (second, "two\n")):
        folder.mkdir()
        write(folder / "app.conf", text)
    (tmp_path / "..data").symlink_to("v1")
    path = tmp_path / "app.conf"
    path.symlink_to("..data/app.conf")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    assert identity(first / "app.conf") in driver.kq.watched()
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    driver.deliver(tmp_path, WRITE)
    changed(driver, "k", path)
    watched = driver.kq.watched()
    assert identity(second / "app.conf") in watched
    assert identity(first / "app.conf") not in watched


def test_more_events_than_one_read_takes(
    driver: FakeDriver, kqueue: ModuleType, tmp_path: Path
) -> None:
    paths = []
    for number in range(3):
        path = tmp_path / f"f{number}"
        write(path, "x\n")
        driver.watcher.watch(Watch(f"k{number}", "file", (str(path),)))
        paths.append(path)
    for _ in range(kqueue.BATCH + 10):
        driver.deliver(paths[0], WRITE)
    driver.deliver(paths[2], WRITE)
    driver.wait_for(lambda: ("k2", str(paths[2])) in driver.changes, "the last event")
    assert ("k0", str(paths[0])) in driver.changes
    assert ("k1", str(paths[1])) not in driver.changes


def test_events_for_unknown_descriptors_are_ignored(driver: FakeDriver, tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    write(path, "one\n")
    driver.watcher.watch(Watch("k", "file", (str(path),)))
    stray = os.open(os.devnull, os.O_RDONLY)
    try:
        driver.kq.queue.append(FakeKevent(stray, KQ["KQ_FILTER_VNODE"], 0, WRITE))
        driver.deliver(path, WRITE)
        changed(driver, "k", path)
    finally:
        os.close(stray)


def test_unwatch_and_close_release_every_descriptor(kqueue: ModuleType, tmp_path: Path) -> None:
    paths = []
    for number in range(5):
        folder = tmp_path / f"d{number}"
        folder.mkdir()
        write(folder / "f", "x\n")
        paths.append(folder / "f")
    before = open_fd_count()
    driver = FakeDriver(kqueue.KqueueWatcher(settle=0.05))
    driver.kq = FakeKqueue.made[-1]
    try:
        for cycle in range(20):
            for number, path in enumerate(paths):
                driver.watcher.watch(Watch(f"k{number}", "file", (str(path),)))
            assert len(driver.kq.live()) == 2 * len(paths)  # each file and its folder
            for number in range(len(paths)):
                driver.watcher.unwatch(f"k{number}")
            assert not driver.kq.live(), f"cycle {cycle}: descriptors left watched"
        driver.watcher.watch(Watch("k", "file", (str(paths[0]),)))
    finally:
        driver.close()
    assert driver.kq.closed
    assert open_fd_count() == before, "the watcher's descriptors and the kqueue are closed"


def test_the_daemons_choice_uses_kqueue_where_there_is_no_inotify(
    kqueue: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_watcher asks the libc for inotify and select for kqueue, not the
    platform's name: with no inotify and a kqueue, kqueue is chosen."""
    monkeypatch.setattr(taskforce.watch, "has_inotify", lambda: False)
    monkeypatch.setitem(sys.modules, "taskforce.watch.kqueue", kqueue)
    monkeypatch.delenv("TASKFORCE_WATCHER", raising=False)
    watcher = taskforce.watch.make_watcher()
    try:
        assert watcher.backend == "kqueue"
        assert isinstance(watcher, kqueue.KqueueWatcher)
        selector = selectors.DefaultSelector()
        watcher.attach(selector)
        assert FakeKqueue.made[-1].fileno() in selector.get_map()
        selector.close()
    finally:
        watcher.close()
