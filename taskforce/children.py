"""The shell's side of the processes it runs: start them, reap them, run
commands, and report each end to the core.

``Children`` is a part of the ``Daemon`` (``taskforce.daemon``): the spawn
of a slot's process (its output pipe, its notify socket and held sockets,
its cgroup), the reaping of every child and what it means (a leader's exit,
a group still draining, a command's end, a leftover gone), the processes
found through pidfiles, and the last-ditch stop when the loop itself fails.
It decides nothing: each happening becomes an event for the core.  It must
never let an OS failure escape as an exception: a failed spawn is a
``SpawnFailed``, a failed command a ``CommandExited`` with its error.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable, Iterable

from taskforce import output, pidwatch, process, tracking
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.notify import NotifySockets, sender_slot
from taskforce.pidwatch import ProcessWatch
from taskforce.sockets import SocketError, Sockets


class Children:
    """The processes the daemon started, and their ends (see the module)."""

    selector: selectors.BaseSelector
    tracker: tracking.Tracker
    pidwatch: ProcessWatch
    leftover_watch: ProcessWatch
    output: output.Output
    notify: NotifySockets
    sockets: Sockets
    #: the processes the core spawned, by pid: the slot each leads
    leaders: dict[int, tracking.Slot]
    #: commands run by ``RunCommand`` that have not ended: (task, name,
    #: instance, run) by pid (each leads its own process group)
    commands: dict[int, tuple[str, str, int, int]]
    exec_reports: dict[int, int]
    exec_errors: dict[int, str]
    #: daemons named by a pidfile (not our children), by pid: the slot each is
    daemons: dict[int, tracking.Slot]
    #: slots whose leader is gone while the rest of them drains, by leader pid
    draining: dict[int, tracking.Slot]
    #: what an earlier taskforce left (see ``LeftoversFound``), by slot
    leftovers: dict[tracking.Slot, set[int]]
    feed: Callable[[ev.Event], tuple[fx.Effect, ...]]

    def _reap(self) -> None:
        for pid, code, signame in process.reaped():
            now = time.monotonic()
            if pid in self.leaders:
                slot = self.leaders.pop(pid)
                error = self._exec_report(pid, exited=True)
                alive = self.tracker.alive(slot, pid, frozenset(self.commands))
                if alive:
                    self.draining[pid] = slot
                    self.tracker.watch_empty(slot)
                self.feed(ev.ProcessExited(now, pid, code, signame, group_alive=alive, error=error))
            elif pid in self.commands:
                task, name, instance, run = self.commands.pop(pid)
                self.feed(
                    ev.CommandExited(
                        now, task, name, pid, code, signame, instance=instance, run=run
                    )
                )
            # Anything else is an orphan we adopted as subreaper: reaped, done.
        if self.draining:
            self._check_draining()

    def _check_draining(self) -> None:
        for pgid, slot in sorted(self.draining.items()):
            if not self.tracker.alive(slot, pgid, frozenset(self.commands)):
                del self.draining[pgid]
                self.tracker.unwatch(slot)
                self.feed(ev.GroupEmptied(time.monotonic(), pgid))

    def _slot_emptied(self, slot: tracking.Slot) -> None:
        """The tracker saw ``slot``'s cgroup empty."""
        if slot in self.leftovers:
            self._check_leftover(slot)
        for pgid, draining in sorted(self.draining.items()):
            if draining == slot and not self.tracker.alive(slot, pgid):
                del self.draining[pgid]
                self.feed(ev.GroupEmptied(time.monotonic(), pgid))

    def _leftover_exit(self, pid: int) -> None:
        for slot, pids in sorted(self.leftovers.items()):
            if pid in pids:
                pids.discard(pid)
                self._check_leftover(slot)

    def _check_leftover(self, slot: tracking.Slot) -> None:
        pids = self.leftovers.get(slot)
        if pids is not None and not self.tracker.leftover_alive(slot, pids):
            del self.leftovers[slot]
            self.feed(ev.LeftoverGone(time.monotonic(), slot[0], slot[1]))

    def _hold_leftover(self, slot: tracking.Slot, pids: Iterable[int]) -> None:
        """``pids`` of ``slot`` are leftovers: watched until every one is gone."""
        held = self.leftovers[slot] = set(pids)
        for pid in sorted(held):
            self.leftover_watch.watch(pid)
        self.tracker.watch_empty(slot)

    def _sweep_slot(self, effect: fx.SweepSlot) -> ev.Event:
        """What the slot holds though the core knows none of its processes
        (its start command named no daemon, so none of them is a leader or
        a watched daemon): leftovers, stopped as an earlier taskforce's are."""
        now = time.monotonic()
        slot = (effect.task, effect.instance)
        pids = self.tracker.processes(slot) - set(self.commands)
        if not pids:
            return ev.LeftoverGone(now, effect.task, effect.instance)
        self._hold_leftover(slot, pids)
        return ev.LeftoversFound(now, ((effect.task, effect.instance, tuple(sorted(pids))),))

    def _stop_leftover(self, effect: fx.StopLeftover) -> ev.Event | None:
        slot = (effect.task, effect.instance)
        pids = self.leftovers.get(slot)
        if pids is None:
            return ev.LeftoverGone(time.monotonic(), effect.task, effect.instance)
        for pid in sorted(self.tracker.signal_leftover(slot, pids, effect.signal) - pids):
            pids.add(pid)  # started since the sweep
            self.leftover_watch.watch(pid)
        if not self.tracker.leftover_alive(slot, pids):
            del self.leftovers[slot]
            return ev.LeftoverGone(time.monotonic(), effect.task, effect.instance)
        return None

    def _exec_report(self, pid: int, *, exited: bool = False) -> str:
        """Read ``pid``'s exec report if it is complete; the error, if any."""
        fd = self.exec_reports.get(pid)
        if fd is None:
            return self.exec_errors.pop(pid, "") if exited else ""
        if exited:
            os.set_blocking(fd, True)  # the child is gone: end of file is here
        try:
            error = process.read_report(fd)
        except BlockingIOError:
            return ""
        self.selector.unregister(fd)
        del self.exec_reports[pid]
        if exited:
            return error or ""
        if error:
            self.exec_errors[pid] = error
        return ""

    def _watch_process(self, task: str, instance: int, pid: int) -> None:
        if pidwatch.is_our_child(pid):
            self.leaders[pid] = (task, instance)  # reaped on SIGCHLD like any child
            return
        self.daemons[pid] = (task, instance)
        if not self.pidwatch.watch(pid):
            self._watched_exit(pid)

    def _watched_exit(self, pid: int) -> None:
        # Not our child: its exit status is not ours to know.  What it
        # leaves in its slot (workers it forked, a SIGKILLed master's
        # children) is the slot's to drain, as for a child of ours:
        # otherwise they would outlive their slot, and taskforce itself.
        slot = self.daemons.pop(pid, None)
        alive = slot is not None and self.tracker.alive(slot, pid, frozenset(self.commands))
        if slot is not None and alive:
            self.draining[pid] = slot
            self.tracker.watch_empty(slot)
        self.feed(ev.ProcessExited(time.monotonic(), pid, group_alive=alive))
        if alive:
            self._check_draining()

    def _spawn(self, effect: fx.Spawn) -> ev.Event:
        try:
            # --- output capture: a pipe each (or /dev/null) for stdout and stderr
            stdout, stderr, output_done = self.output.prepare(effect)
        except OSError as exc:
            return ev.SpawnFailed(
                time.monotonic(), effect.task, effect.instance, effect.generation, str(exc)
            )
        try:
            slot = (effect.task, effect.instance)
            env = self.tracker.environment(effect.env)
            if effect.notify:  # --- readiness
                env = self.notify.environment(slot, effect.user, env)
            options = effect.start_options()
            options["sockets"] = self.sockets.fds(effect.sockets)  # --- sockets: (name, fd)
            pid, report = process.start(
                effect.argv,
                env,
                cgroup=self.tracker.slot_cgroup(slot),
                stdout=stdout,
                stderr=stderr,
                **options,
            )
        except (process.SpawnError, SocketError, OSError) as exc:
            output_done(False)
            return ev.SpawnFailed(
                time.monotonic(), effect.task, effect.instance, effect.generation, str(exc)
            )
        output_done(True)
        self.leaders[pid] = slot
        if report is not None:
            # Whether the exec worked is told by the report pipe, read when
            # it is ready (or when the child is reaped, whichever comes
            # first).  None: the exec already happened (posix_spawn), and a
            # pipe held open meanwhile would only grow the descriptor table
            # every later spawn copies.
            self.exec_reports[pid] = report
            self.selector.register(report, selectors.EVENT_READ, lambda: self._exec_report(pid))
        return ev.ProcessStarted(
            time.monotonic(), effect.task, effect.instance, effect.generation, pid
        )

    # --- readiness: who sent a notify datagram, and telling the core

    def _notify_sender(self, pid: int) -> tracking.Slot | None:
        return sender_slot(pid, self.tracker, self.leaders, self.draining, self.commands)

    def _notified(self, slot: tracking.Slot, pid: int, message: str) -> None:
        self.feed(ev.Notified(time.monotonic(), slot[0], slot[1], pid, message))

    def _run_command(self, effect: fx.RunCommand) -> ev.Event | None:
        try:
            pid = process.spawn(
                effect.argv,
                self.tracker.environment(effect.env),
                cwd=effect.cwd,
                user=effect.user,
                group=effect.group,
            )
        except (process.SpawnError, OSError) as exc:
            return ev.CommandExited(
                time.monotonic(),
                effect.task,
                effect.name,
                0,
                None,
                None,
                str(exc),
                instance=effect.instance,
                run=effect.run,
            )
        self.commands[pid] = (effect.task, effect.name, effect.instance, effect.run)
        return None

    def _stop_command(self, effect: fx.StopCommand) -> None:
        # Only while its leader is not reaped: until then the group id is
        # still its own and cannot name anyone else's group.
        for pid, (task, _, instance, run) in self.commands.items():
            if (task, instance, run) == (effect.task, effect.instance, effect.run):
                process.send_signal(pid, effect.signal, group=True)
                return

    def emergency_stop(self) -> None:
        """The loop itself failed: leave nothing running behind us."""
        slots = {**self.leaders, **self.draining}
        groups = sorted(set(slots) | set(self.commands))
        for signame in ("SIGTERM", "SIGKILL"):
            for pgid in groups:
                if pgid in slots:
                    self.tracker.signal(slots[pgid], pgid, signame)
                else:
                    process.send_signal(pgid, signame, group=True)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(
                self.tracker.alive(slots[g], g) if g in slots else process.group_alive(g)
                for g in groups
            ):
                process.reap()
                time.sleep(0.02)
        process.reap()
