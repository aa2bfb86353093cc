"""Which processes belong to which slot, so that nothing outlives its slot.

Two ways, chosen once at start and logged:

- **cgroup v2** (Linux, where taskforce may create cgroups beside itself:
  root on a host with a writable unified hierarchy, a delegated subtree
  under systemd ``Delegate=yes``, a container with its own cgroup
  namespace).  Every slot runs in a cgroup of its own,
  ``<taskforce's cgroup>/taskforce-<id>/<task>.<instance>``; whatever a task
  starts stays in it, ``setsid`` and double forks included.  A stop signals
  every process of the cgroup (SIGKILL through ``cgroup.kill``), and the
  slot is empty when ``cgroup.events`` says ``populated 0`` -- told by
  inotify, never polled.
- **process group and marker** (elsewhere).  Every process taskforce
  starts carries ``TASKFORCE_ID=<id>`` besides its ``Task_name`` and
  ``Task_instance`` in its environment, and inherits them; what leaves the
  process group is still found by that marker under ``/proc`` and stopped
  with its slot.  A process that scrubs its own environment *and* leaves
  its group escapes here; the README says so.  Where there is no ``/proc``
  (macOS, the BSDs: ``PROC`` is false) the marker is still set but nothing
  looks for it: a slot is its process group, and what leaves the group
  escapes.

``<id>`` names one taskforce by what it supervises (its config and roles
files), so that after a crash (SIGKILL, the OOM killer) the next one finds
what the last one left (``sweep``) whichever way it ran.  ``InstanceLock``
(``taskforce.instancelock``) makes sure two taskforces with the same id
never run at once, so a sweep never takes the processes of a live taskforce.

This module reports facts and carries out signals; it never decides what to
stop, keep or start -- the core does.
"""

from __future__ import annotations

import logging
import os
import selectors
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, unquote

from taskforce.core.environment import as_dict
from taskforce.instancelock import InstanceHeld as InstanceHeld
from taskforce.instancelock import InstanceLock as InstanceLock
from taskforce.instancelock import instance_id as instance_id
from taskforce.instancelock import lock_path
from taskforce.pidwatch import alive
from taskforce.process import group_alive, send_signal

log = logging.getLogger("taskforce")

#: Whether processes can be looked at under ``/proc`` (their environment,
#: cgroup and children): a feature of the host, found once.
PROC = os.path.isdir("/proc/self")

#: The environment variable every process taskforce starts carries.
MARKER = "TASKFORCE_ID"

Slot = tuple[str, int]


# ------------------------------------------------------------- /proc facts


def _environ_bytes(pid: int) -> bytes | None:
    """``/proc/PID/environ`` as it is.  Read with bare descriptors: the start-up
    sweep reads it for every process on the host, and a file object costs
    as much again as the read."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _environ(pid: int) -> list[bytes] | None:
    data = _environ_bytes(pid)
    return None if data is None else data.split(b"\0")


def _marked_slot(fields: list[bytes]) -> Slot | None:
    """The slot an environment (``/proc/PID/environ``, split) names."""
    task = instance = None
    for item in fields:
        if item.startswith(b"Task_name="):
            task = os.fsdecode(item[10:])
        elif item.startswith(b"Task_instance="):
            instance = item[14:]
    if task is None or instance is None or not instance.isdigit():
        return None
    return task, int(instance)


def marked_processes(ident: str, skip: frozenset[int] = frozenset()) -> dict[Slot, list[int]]:
    """Live processes carrying ``TASKFORCE_ID=ident``, by the slot they name."""
    needle = f"{MARKER}={ident}".encode()
    found: dict[Slot, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    own = os.getpid()
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == own or pid in skip:
            continue
        data = _environ_bytes(pid)
        if not data or needle not in data:  # (most processes: no need to split)
            continue
        fields = data.split(b"\0")
        if needle not in fields:
            continue
        slot = _marked_slot(fields)
        if slot is None or not alive(pid):
            continue
        found.setdefault(slot, []).append(pid)
    for pids in found.values():
        pids.sort()
    return found


# ------------------------------------------------------------------ cgroups


def _own_cgroup() -> tuple[str | None, str]:
    """The folder of taskforce's own v2 cgroup, or None and why not."""
    if not os.path.exists("/proc/self/cgroup"):
        return None, "no /proc/self/cgroup: the kernel has no cgroups"
    try:
        with open("/proc/self/cgroup") as handle:
            relative = next((line[3:].strip() for line in handle if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as handle:
            mounts = [line.split() for line in handle]
    except OSError as exc:
        return None, f"cannot read /proc: {exc.strerror}"
    if relative is None:
        return None, "no cgroup v2 hierarchy"
    for fields in mounts:
        separator = fields.index("-") if "-" in fields else -1
        if separator < 0 or fields[separator + 1] != "cgroup2":
            continue
        root, mount = fields[3], fields[4]
        if not relative.startswith(root.rstrip("/") + "/") and relative != root:
            continue
        inner = relative[len(root.rstrip("/")) :].lstrip("/")
        return os.path.join(mount, inner) if inner else mount, ""
    return None, "no cgroup v2 hierarchy mounted"


def _slot_folder(slot: Slot) -> str:
    task, instance = slot
    return f"{quote(task, safe='-_')}.{instance}"


def _folder_slot(name: str) -> Slot | None:
    task, dot, instance = name.rpartition(".")
    if not dot or not instance.isdigit():
        return None
    return unquote(task), int(instance)


class Tracker:
    """The slots' process trees: where they run, whether they are empty,
    how to signal all of them, and what an earlier taskforce left.

    ``on_empty(slot)`` is called (from the selector) when a slot's cgroup
    that ``watch_empty`` was asked about becomes empty.
    """

    def __init__(
        self,
        ident: str,
        on_empty: Callable[[Slot], None],
        *,
        use_cgroups: bool | None = None,
    ) -> None:
        self.ident = ident
        self.on_empty = on_empty
        self.tree: str | None = None
        #: the tree as ``/proc/PID/cgroup`` names it
        self.tree_in_hierarchy: str | None = None
        self.how = ""
        self._inotify: object | None = None
        self._inotify_fd = -1
        self._watches: dict[int, Slot] = {}
        self._by_slot: dict[Slot, int] = {}
        self._selector: selectors.BaseSelector | None = None
        #: set by the daemon: whether it is its descendants' subreaper, and
        #: the children it started (see ``alive``)
        self.subreaper = False
        self.known_children: Callable[[], set[int]] = set
        if use_cgroups is None:
            use_cgroups = os.environ.get("TASKFORCE_CGROUPS", "auto") != "off"
        why = "turned off (TASKFORCE_CGROUPS=off)"
        if use_cgroups:
            self.tree, why = self._make_tree()
        if self.tree is not None:
            self.how = f"a cgroup per slot under {self.tree}"
        elif not PROC:
            self.how = (
                f"process groups alone (no cgroup: {why}; no /proc to find the "
                "TASKFORCE_ID marker in: a process that leaves its group is not "
                "tracked, and what a crashed taskforce left is not found)"
            )
        else:
            self.how = (
                "process groups, and the TASKFORCE_ID marker in the environment "
                f"for what leaves them (no cgroup: {why})"
            )

    # ------------------------------------------------------------ set-up

    def _make_tree(self) -> tuple[str | None, str]:
        base, why = _own_cgroup()
        if base is None:
            return None, why
        try:
            with open("/proc/self/cgroup") as handle:
                own = next(line[3:].strip() for line in handle if line.startswith("0::"))
        except (OSError, StopIteration):
            return None, "cannot read /proc/self/cgroup"
        tree = os.path.join(base, f"taskforce-{self.ident}")
        # Twice: another taskforce starting now may have taken the empty
        # tree a killed one left with this id for abandoned, and removed
        # it just as this one came to take it over.
        for _attempt in range(2):
            try:
                os.makedirs(tree, exist_ok=True)
            except OSError as exc:
                return None, f"cannot create {tree}: {exc.strerror}"
            if os.path.exists(os.path.join(tree, "cgroup.procs")):
                break
        gone = _remove_abandoned_trees(base, self.ident)
        if gone:
            log.info(
                "removed %d empty cgroup %s under %s left by %s",
                gone,
                "tree" if gone == 1 else "trees",
                base,
                "a taskforce that is gone" if gone == 1 else "taskforces that are gone",
            )
        for needed in ("cgroup.procs", "cgroup.events", "cgroup.kill"):
            if not os.path.exists(os.path.join(tree, needed)):
                return None, f"{tree} has no {needed} (a kernel before 5.14?)"
        self.tree_in_hierarchy = own.rstrip("/") + f"/taskforce-{self.ident}"
        return tree, ""

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector

    @property
    def cgroups(self) -> bool:
        return self.tree is not None

    def slot_cgroup(self, slot: Slot) -> str | None:
        """The ``cgroup.procs`` a new process of ``slot`` joins (made if needed)."""
        if self.tree is None:
            return None
        folder = os.path.join(self.tree, _slot_folder(slot))
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        except FileNotFoundError:
            # The tree itself was removed while empty (by hand, or by a
            # taskforce that took it for abandoned): make it again.
            os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, "cgroup.procs")

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the marker added (a copy)."""
        out = as_dict(env)
        out[MARKER] = self.ident
        return out

    # ----------------------------------------------------------- members

    def _cgroup_pids(self, slot: Slot) -> list[int]:
        if self.tree is None:
            return []
        return sorted(self._pids_below(os.path.join(self.tree, _slot_folder(slot))))

    @staticmethod
    def _pids_below(folder: str) -> Iterator[int]:
        for root, _dirs, files in os.walk(folder):
            if "cgroup.procs" not in files:
                continue
            try:
                with open(os.path.join(root, "cgroup.procs")) as handle:
                    text = handle.read()
            except OSError:
                continue
            yield from (int(word) for word in text.split())

    def _populated(self, slot: Slot) -> bool:
        assert self.tree is not None
        try:
            with open(os.path.join(self.tree, _slot_folder(slot), "cgroup.events")) as handle:
                return "populated 1" in handle.read()
        except FileNotFoundError:
            return False
        except OSError:
            return True  # unreadable: do not claim it is empty

    def alive(self, slot: Slot, pgid: int, skip: frozenset[int] = frozenset()) -> bool:
        """Whether anything of ``slot`` (led by ``pgid``) is left."""
        if group_alive(pgid):
            return True
        if self.tree is not None:
            return self._populated(slot)
        if not PROC:
            return False  # no marker to look for: the group was the slot
        if self.subreaper and not self._strays():
            # Whatever of the slot outlived its process group had its parent
            # die with the group, so it is our child now: none, nothing left.
            return False
        return bool(marked_processes(self.ident, skip).get(slot))

    def _strays(self) -> set[int]:
        """Our children that we did not start (orphans we adopted as
        subreaper); every child when the kernel cannot list them."""
        found: set[int] = set()
        try:
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/children") as handle:
                    found.update(int(word) for word in handle.read().split())
        except (OSError, ValueError):
            return {-1}  # cannot tell: look everywhere
        return found - self.known_children()

    def holds(self, slot: Slot, pid: int) -> bool:
        """Whether process ``pid`` is one of ``slot``'s: in its cgroup, or
        carrying this taskforce's marker for it (inherited from the slot's
        start command by every descendant)."""
        if self.tree_in_hierarchy is not None:
            try:
                with open(f"/proc/{pid}/cgroup") as handle:
                    line = next((ln for ln in handle if ln.startswith("0::")), "")
            except OSError:
                line = ""
            mine = self.tree_in_hierarchy.rstrip("/") + "/" + _slot_folder(slot)
            where = line[3:].strip()
            if where == mine or where.startswith(mine + "/"):
                return True
        fields = _environ(pid)
        if not fields:
            return False
        task, instance = slot
        wanted = (
            f"{MARKER}={self.ident}".encode(),
            b"Task_name=" + os.fsencode(task),
            f"Task_instance={instance}".encode(),
        )
        return all(item in fields for item in wanted)

    def slot_of(self, pid: int) -> Slot | None:
        """The slot whose process tree holds ``pid``, the other way round from
        ``holds``: its cgroup when slots have them (then only that: every
        process of a slot is in it, and a cgroup cannot be forged), else
        this taskforce's marker in its environment; None for any other."""
        if self.tree_in_hierarchy is not None:
            try:
                with open(f"/proc/{pid}/cgroup") as handle:
                    line = next((ln for ln in handle if ln.startswith("0::")), "")
            except OSError:
                return None
            where, prefix = line[3:].strip(), self.tree_in_hierarchy.rstrip("/") + "/"
            return (
                _folder_slot(where[len(prefix) :].split("/")[0])
                if where.startswith(prefix)
                else None
            )
        fields = _environ(pid)
        if not fields or f"{MARKER}={self.ident}".encode() not in fields:
            return None
        return _marked_slot(fields)

    def signal(
        self, slot: Slot, pgid: int, signame: str, skip: frozenset[int] = frozenset()
    ) -> None:
        """Send ``signame`` to the process group ``pgid`` and every other
        process of ``slot``."""
        send_signal(pgid, signame, group=True)
        if self.tree is not None:
            if signame == "SIGKILL" and self._kill_cgroup(slot):
                return
            others: Iterable[int] = self._cgroup_pids(slot)
        elif PROC:
            others = marked_processes(self.ident, skip).get(slot, ())
        else:
            return
        for pid in others:
            # The group has had it already: a second SIGTERM is, to many
            # daemons, "stop now, skip the clean shutdown".
            if not _in_group(pid, pgid):
                send_signal(pid, signame, group=False)

    def _kill_cgroup(self, slot: Slot) -> bool:
        """SIGKILL to everything in the slot's cgroup, at once (``cgroup.kill``:
        what forks meanwhile is killed too); False if it could not be done."""
        assert self.tree is not None
        try:
            with open(os.path.join(self.tree, _slot_folder(slot), "cgroup.kill"), "w") as handle:
                handle.write("1")
        except OSError:
            return False  # the caller signals each process instead
        return True

    def watch_empty(self, slot: Slot) -> bool:
        """Call ``on_empty(slot)`` when the slot's cgroup becomes empty from
        now on; False when that cannot be told (no cgroup): the caller looks
        again on each SIGCHLD, or polls.  Either way the caller checks once
        itself after it has reported what it knows."""
        if self.tree is None or self._selector is None:
            return False
        if slot in self._by_slot:
            return True
        try:
            if self._inotify is None:
                from taskforce.watch.inotify import IN_MODIFY, Inotify

                self._inotify = inotify = Inotify()
                self._inotify_fd = inotify.init()
                self._modify = IN_MODIFY
                self._selector.register(self._inotify_fd, selectors.EVENT_READ, self._on_inotify)
            events = os.path.join(self.tree, _slot_folder(slot), "cgroup.events")
            wd = self._inotify.add_watch(self._inotify_fd, events, self._modify)  # type: ignore[attr-defined]
        except OSError as exc:
            log.debug("cannot watch %s's cgroup: %s", slot, exc)
            return False
        self._watches[wd] = slot
        self._by_slot[slot] = wd
        log.debug("%s[%d]: watching its cgroup until it is empty", *slot)
        # (Never ``on_empty`` from here: the caller has yet to report what it
        # knows.  Emptiness before the watch was in place is its to look at.)
        return True

    def unwatch(self, slot: Slot) -> None:
        """No more ``on_empty`` for ``slot`` (its emptiness was seen otherwise)."""
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        wd = self._by_slot.pop(slot, None)
        if wd is not None:
            self._watches.pop(wd, None)
            self._inotify.rm_watch(self._inotify_fd, wd)  # type: ignore[union-attr]

    def _on_inotify(self) -> None:
        from taskforce.watch.inotify import parse_events

        touched: set[Slot] = set()
        try:
            while True:
                data = os.read(self._inotify_fd, 65536)
                if not data:
                    break
                touched.update(
                    self._watches[wd] for wd, *_ in parse_events(data) if wd in self._watches
                )
        except BlockingIOError:
            pass
        for slot in sorted(touched):
            log.debug("%s[%d]: its cgroup changed", *slot)
            if slot in self._by_slot and not self._populated(slot):
                self._forget(slot)
                self.on_empty(slot)

    # --------------------------------------------------------- leftovers

    def sweep(self) -> dict[Slot, list[int]]:
        """What an earlier taskforce with this id left running, by slot:
        the processes in its slots' cgroups and those carrying its marker."""
        found: dict[Slot, set[int]] = {}
        if self.tree is not None:
            try:
                names = sorted(os.listdir(self.tree))
            except OSError:
                names = []
            for name in names:
                slot = _folder_slot(name)
                if slot is not None and os.path.isdir(os.path.join(self.tree, name)):
                    pids = self._cgroup_pids(slot)
                    if pids:
                        found.setdefault(slot, set()).update(pids)
        if PROC:
            for slot, pids in marked_processes(self.ident).items():
                found.setdefault(slot, set()).update(pids)
        return {slot: sorted(pids) for slot, pids in sorted(found.items())}

    def leftover_alive(self, slot: Slot, pids: set[int]) -> bool:
        if any(alive(pid) for pid in pids):
            return True
        if self.tree is not None:
            return self._populated(slot)
        return bool(marked_processes(self.ident).get(slot))

    def processes(self, slot: Slot) -> set[int]:
        """Every process in ``slot`` now: its cgroup's, or those carrying its
        marker (a walk of ``/proc``); none where neither can be told."""
        if self.tree is not None:
            return set(self._cgroup_pids(slot))
        if PROC:
            return set(marked_processes(self.ident).get(slot, ()))
        return set()

    def signal_leftover(self, slot: Slot, pids: set[int], signame: str) -> set[int]:
        """Signal what is left of ``slot``; the pids now known to be in it."""
        now = set(pids)
        if self.tree is not None:
            now.update(self._cgroup_pids(slot))
        if PROC:
            now.update(marked_processes(self.ident).get(slot, ()))
        if self.tree is not None and signame == "SIGKILL":
            self._kill_cgroup(slot)
        for pid in sorted(now):
            send_signal(pid, signame, group=False)
        return now

    # ------------------------------------------------------------- close

    def close(self) -> None:
        """Let go of the watches and remove the empty cgroups."""
        if self._inotify_fd >= 0:
            if self._selector is not None:
                try:
                    self._selector.unregister(self._inotify_fd)
                except (KeyError, ValueError):
                    pass
            os.close(self._inotify_fd)
            self._inotify_fd = -1
        self._watches.clear()
        self._by_slot.clear()
        if self.tree is not None:
            _remove_empty(self.tree)


def _remove_empty(tree: str) -> bool:
    """Remove the cgroups of ``tree`` that hold no process, deepest first,
    and ``tree`` itself if it is left empty: whether it was."""
    for root, dirs, _files in os.walk(tree, topdown=False):
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass  # still populated (an adopted daemon, a leftover)
    try:
        os.rmdir(tree)
    except OSError:
        return False
    return True


def _remove_abandoned_trees(base: str, own: str) -> int:
    """Remove the empty cgroup trees beside ours of taskforces that died
    without removing theirs (SIGKILL, the OOM killer) and never ran again
    with their config; how many.

    Every cgroup a tree leaves stays on the host until removed, holding
    kernel memory: about 9 KiB each here, so 370 MB for the 45,000 that
    killed benchmark daemons had left on this project's machine.
    Only trees of this user (whose lock would be in this user's folder),
    holding no process, and whose lock names no live process: a taskforce
    that runs, or execs for a reset, keeps its pid there.  What holds a
    process is left for a taskforce with its config, which stops it.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    removed = 0
    for name in names:
        ident = name.removeprefix("taskforce-")
        if ident in (name, own) or len(ident) != 16 or not set(ident) <= _HEX_DIGITS:
            continue
        tree = os.path.join(base, name)
        try:
            if os.lstat(tree).st_uid != os.geteuid() or _tree_populated(tree):
                continue
            if _lock_holder_alive(lock_path(ident)):
                continue
        except OSError:
            continue
        removed += _remove_empty(tree)
    return removed


_HEX_DIGITS = frozenset("0123456789abcdef")


def _tree_populated(tree: str) -> bool:
    with open(os.path.join(tree, "cgroup.events")) as handle:
        return "populated 1" in handle.read()


def _lock_holder_alive(path: str) -> bool:
    """Whether the pid last written in the lock at ``path`` is a live
    process (pid reuse only makes this say yes when it could say no)."""
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return False
    return text.isdigit() and alive(int(text))


def _in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is in process group ``pgid`` (or gone already)."""
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return True
    except OSError:
        return False
