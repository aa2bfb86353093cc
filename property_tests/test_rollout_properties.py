"""Properties of rollouts (core.rollout), driven through ``taskforce.simulator``.

A pool of ``count`` processes that say ``READY=1`` (``ready: notify``) a
little after they start -- or never, for a broken release, whose processes
exit at start-up or hang unready -- goes through random changes (config
edits, a watched file, an operator's restart), crashes of its own and the
passing of time.  Throughout:

- the number of ready processes never drops below ``count - max_unavailable``
  because of taskforce: only a process that crashed on its own, or one of a
  broken release, is missing;
- a broken release never lowers the ready count of the pool (its new
  processes fail; the old ones keep serving, and one that dies meanwhile
  comes back as it was);
- no slot ever has two processes at once (a surge takes slots after the
  pool's), and a surge never exceeds ``max_surge``;
- once the release is fixed, the pool settles at ``count`` ready processes,
  every one of the newest spec, with no surge left and no rollout running;
- and the run replays exactly.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, note
from hypothesis import strategies as st

from taskforce.core import events as ev
from taskforce.core.codec import freeze
from taskforce.core.lifecycle import UP_STATES, SlotState
from taskforce.simulator import Simulation, replay

READY_AFTER = 0.3  # seconds a good process takes to say READY=1


def _config(version: int, count: int, surge: int, unavailable: int) -> Any:
    return freeze(
        {
            "tasks": {
                "web": {
                    "commands": {"start": ("/usr/bin/web", f"v{version}")},
                    "count": count,
                    "ready": "notify",
                    "ready_timeout": 5,
                    "rollout": {"max_surge": surge, "max_unavailable": unavailable},
                    "events": ({"type": "file_change", "path": "/srv/app.py", "command": "stop"},),
                }
            }
        }
    )


class Pool:
    """The simulated world of one pool, and what it checks after each step."""

    def __init__(self, count: int, surge: int, unavailable: int) -> None:
        self.count, self.surge, self.unavailable = count, surge, unavailable
        self.version = 1
        self.broken: set[int] = set()  # versions whose processes never get ready
        self.exits_at_start = True  # how a broken release fails
        self.sim = Simulation()
        # The test itself says READY=1 for each good process (``announce``),
        # so the simulated world must not say it for any.
        self.sim.never_ready.add("web")
        self.sim.boot(_config(1, count, surge, unavailable))
        self.own_crashes = 0  # crashes since the ready count was last whole
        self.serving = False  # the pool has been whole once (start-up is over)
        self.settle()
        assert self.serving, "the pool starts"

    def version_of(self, pid: int) -> int:
        argv = self.sim.processes[pid].argv
        return int(argv[-1][1:])

    def tick(self, seconds: float) -> None:
        """Time passes; good processes that have run long enough say READY=1."""
        end = self.sim.now + seconds
        while self.sim.now < end:
            self.sim.advance(min(0.1, end - self.sim.now))
            self.announce()
            self.check()

    def announce(self) -> None:
        for (task, instance), pid in sorted(self.sim.running().items()):
            slot = self.sim.core.slot(task, instance)
            if slot is None or slot.pid != pid or slot.state is not SlotState.RUNNING:
                continue
            proc = self.sim.processes[pid]
            if self.version_of(pid) in self.broken:
                if self.exits_at_start:
                    self.sim.exit(pid, 1)
                continue
            if self.sim.now - proc.started_at >= READY_AFTER:
                self.sim.feed(
                    ev.Notified(
                        at=self.sim.now, task=task, instance=instance, pid=pid, message="READY=1"
                    )
                )

    def ready(self) -> int:
        task = self.sim.core.tasks["web"]
        return sum(1 for slot in task.slots if slot.state is SlotState.READY)

    def check(self) -> None:
        task = self.sim.core.tasks["web"]
        # No slot has two processes; surge slots stay within max_surge.
        per_slot: dict[int, int] = {}
        for proc in self.sim.alive():
            if proc.task == "web":
                per_slot[proc.instance] = per_slot.get(proc.instance, 0) + 1
        assert all(n == 1 for n in per_slot.values()), per_slot
        assert all(i < self.count + self.surge for i in per_slot), per_slot
        ready = self.ready()
        if ready >= self.count:
            self.own_crashes = 0
            self.serving = True
        if not self.serving:
            return
        floor = self.count - self.unavailable - self.own_crashes
        assert ready >= floor, (ready, floor, [(s.instance, s.state, s.reason) for s in task.slots])

    def settle(self) -> None:
        self.tick(3.0)

    # -- the steps

    def change(self, how: str, broken: bool) -> None:
        self.version += 1
        if broken:
            self.broken.add(self.version)
        if how == "config":
            self.sim.reload(_config(self.version, self.count, self.surge, self.unavailable))
        else:
            # The release is the file: processes started from now on run it.
            self.sim.reload(_config(self.version, self.count, self.surge, self.unavailable))
            if how == "file":
                self.sim.touch("/srv/app.py")
            else:
                self.sim.control(99, "restart", {"task": "web"})
        self.check()

    def crash_one(self, index: int) -> None:
        live = sorted(pid for pid, _ in self.sim.groups().items())
        if not live:
            return
        pid = live[index % len(live)]
        slot = self.sim.core._by_pid.get(pid)  # noqa: SLF001 (the test's own view)
        if slot is not None and slot.state is SlotState.READY:
            self.own_crashes += 1
        self.sim.kill(pid)
        self.check()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("change"), st.sampled_from(("config", "file", "restart")), st.booleans()),
        st.tuples(st.just("tick"), st.sampled_from((0.1, 0.5, 2.0, 6.0))),
        st.tuples(st.just("crash"), st.integers(0, 10)),
    ),
    max_size=10,
)


@given(
    count=st.integers(1, 4),
    rollout=st.sampled_from(((1, 0), (0, 1), (2, 0), (1, 1), (0, 2))),
    exits=st.booleans(),
    plan=steps,
)
def test_a_rollout_keeps_the_pool_serving(
    count: int, rollout: tuple[int, int], exits: bool, plan: list[tuple[Any, ...]]
) -> None:
    surge, unavailable = rollout
    pool = Pool(count, surge, unavailable)
    pool.exits_at_start = exits
    for step in plan:
        note(repr(step))
        if step[0] == "change":
            before = pool.ready()
            pool.change(step[1], step[2])
            if step[2] and before >= count:
                # A broken release: its processes fail, the old ones serve.
                pool.tick(7.0)
                serving = pool.ready()
                assert serving >= min(before, count - unavailable), serving
                # It halted, and was not retried in a loop against the pool:
                # no more of its processes started than the rollout may have
                # in flight at once.
                task = pool.sim.core.tasks["web"]
                assert task.rollout_halted, "a release that cannot get ready halts"
                # (A file or restart change is two triggers: the edit, then
                # the event or the request; each may replace what is in flight.)
                triggers = 1 if step[1] == "config" else 2
                tried = [s for _, s in pool.sim.spawns("web") if s.argv[-1] == f"v{pool.version}"]
                assert len(tried) <= (surge + unavailable) * triggers, len(tried)
                # An old process that dies meanwhile comes back as it was,
                # not as the release the rollout halted on.
                task = pool.sim.core.tasks["web"]
                old = [s for s in task.slots if s.state is SlotState.READY and not s.surge]
                if task.rollout_halted and old:
                    pool.own_crashes += 1
                    pool.sim.kill(old[0].pid)
                    pool.tick(3.0)
                    assert pool.ready() >= serving, (pool.ready(), serving)
        elif step[0] == "tick":
            pool.tick(step[1])
        else:
            pool.crash_one(step[1])
    # The fix: a good release, saved.
    pool.change("config", broken=False)
    pool.tick(12.0)
    task = pool.sim.core.tasks["web"]
    assert not task.rollout and not task.rollout_halted, (task.rollout, task.rollout_halted)
    live = {
        slot.instance: pool.version_of(slot.pid)
        for slot in task.slots
        if slot.state in UP_STATES and slot.pid is not None
    }
    assert live == dict.fromkeys(range(count), pool.version), live
    assert pool.ready() == count
    assert replay(pool.sim.log) is None, "the run replays exactly"
