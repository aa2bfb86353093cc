"""Property tests of the pure core, driven through ``taskforce.simulator``.

A hypothesis state machine boots a random config (2-6 tasks with random
counts, controls, requirements forming a DAG, start delays, time limits,
processes that ignore SIGTERM or leave a grandchild behind) and then does
what the world does to a supervisor: kills processes, lets them exit, lets
time pass, touches watched files, reloads a changed config or roles, and
finally asks it to stop.  After every step it checks the invariants the
design promises; at the end it replays the whole recorded run into a fresh
core and expects the same effects, step by step.

Plain properties follow: the event/effect codec round trip, and ``expand``
terminating and being idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import decode, encode, freeze
from taskforce.core.context import MAX_PASSES, ContextError, expand
from taskforce.simulator import (
    ESCAPER,
    IGNORE_TERM,
    STUBBORN_WRAPPER,
    TERM,
    WRAPPER,
    Simulation,
    replay,
)

CONTROLS = ("wait", "once", "event", "suspend", "off")
ROLE_SETS: tuple[tuple[str, ...] | None, ...] = (None, (), ("web",), ("db",), ("web", "db"))
NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
ACTIONS: tuple[dict[str, str], ...] = (
    {"command": "stop"},
    {"signal": "SIGHUP"},
    {"command": "start"},
    {"command": "reload"},
)

# --------------------------------------------------------------- the model


@dataclass
class TaskTemplate:
    """One task of the universe: what never changes, and what a reload may."""

    name: str
    index: int
    requires: tuple[str, ...]
    start_delay: float
    time_limit: float | None
    behaviour: str
    failing: bool
    roles: tuple[str, ...] | None
    action: dict[str, str] | None
    onexit: str | None
    #: how it shows it is ready (None: after start_delay), and how long
    #: after its start its process is ready (the fake world's answer)
    ready: str | None = None
    ready_delay: float = 0.0
    # what a reload may change
    present: bool = True
    control: str = "wait"
    count: int = 1
    version: int = 1

    @property
    def program(self) -> str:
        return f"/missing/{self.name}" if self.failing else f"/usr/bin/{self.name}d"

    @property
    def conf(self) -> str:
        return f"/etc/{self.name}.conf"

    def argv(self) -> tuple[str, ...]:
        return (self.program, "--slot", "{Task_instance}", f"v{self.version}")


@dataclass
class Universe:
    tasks: list[TaskTemplate]
    roles: tuple[str, ...] | None
    spare: dict[str, Any] = field(default_factory=dict)

    def by_name(self, name: str) -> TaskTemplate:
        return next(t for t in self.tasks if t.name == name)

    def present(self) -> list[TaskTemplate]:
        return [t for t in self.tasks if t.present]

    def config(self) -> dict[str, Any]:
        names = {t.name for t in self.present()}
        tasks: dict[str, Any] = {}
        for t in self.present():
            task: dict[str, Any] = {
                "commands": {"start": t.argv(), "reload": ("/bin/true", "reload")},
                "control": t.control,
                "count": t.count,
                "requires": tuple(r for r in t.requires if r in names),
            }
            if t.start_delay:
                task["start_delay"] = t.start_delay
            if t.ready == "notify":
                task["ready"] = "notify"
            elif t.ready == "tcp":
                task["ready"] = {"tcp": 9000 + t.index}
            if t.time_limit:
                task["time_limit"] = t.time_limit
            if t.roles is not None:
                task["roles"] = t.roles
            if t.action is not None:
                task["events"] = ({"type": "file_change", "path": (t.conf,), **t.action},)
            if t.onexit is not None and t.onexit in names:
                task["onexit"] = ({"type": "start", "task": t.onexit},)
            tasks[t.name] = task
        return cast(dict[str, Any], freeze({"tasks": tasks, "settings": {}, "defines": {}}))

    def in_scope(self, t: TaskTemplate) -> bool:
        if not t.present or t.control == "off":
            return False
        return self.roles is None or not t.roles or any(r in self.roles for r in t.roles)

    def wanted_slots(self, t: TaskTemplate) -> int:
        """How many slots may have a process once things settle."""
        if not self.in_scope(t) or t.control in ("suspend", "off"):
            return 0
        return t.count


@st.composite
def universes(draw: st.DrawFn) -> Universe:
    n = draw(st.integers(2, 6))
    names = draw(st.permutations(NAMES))[:n]
    tasks = []
    for index, name in enumerate(names):
        earlier = names[:index]
        requires = tuple(
            r for r in earlier if draw(st.integers(0, 2)) == 0
        )  # a DAG: only earlier tasks may be required
        tasks.append(
            TaskTemplate(
                name=name,
                index=index,
                requires=requires,
                start_delay=draw(st.sampled_from((0.0, 0.0, 0.5, 2.0))),
                time_limit=draw(st.sampled_from((None, None, None, 3.5, 12.0))),
                behaviour=draw(
                    st.sampled_from((TERM, TERM, IGNORE_TERM, WRAPPER, STUBBORN_WRAPPER, ESCAPER))
                ),
                failing=draw(st.integers(0, 9)) == 0,
                roles=draw(st.sampled_from((None, None, ("web",), ("db",)))),
                action=draw(st.one_of(st.none(), st.sampled_from(ACTIONS))),
                onexit=draw(st.one_of(st.none(), st.sampled_from(names))),
                control=draw(
                    st.sampled_from(("wait", "wait", "wait", "once", "event", "suspend", "off"))
                ),
                count=draw(st.sampled_from((0, 1, 1, 1, 2, 3))),
                ready=draw(st.sampled_from((None, None, "notify", "tcp"))),
                ready_delay=draw(st.sampled_from((0.0, 0.3, 1.5))),
            )
        )
    roles = draw(st.sampled_from(ROLE_SETS))
    return Universe(tasks=tasks, roles=roles)


STOP_TIMEOUT = 5.0  # the default; the generated configs keep it
EPSILON = 1e-9

#: What a reload may change; "broken" sends a config that fails to build.
MUTATIONS = ("argv", "count", "control", "toggle", "roles", "broken")


def roundtrip(item: Any) -> Any:
    return decode(json.loads(json.dumps(encode(item))))


# ------------------------------------------------------- the state machine


class CoreMachine(RuleBasedStateMachine):
    """The core under a simulated world, checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation | None = None
        self.universe: Universe | None = None
        self.stopping = False
        self.errors: list[str] = []
        self.checked_steps = 0
        self.rejected_steps: set[int] = set()
        #: the longest the shell was ever held up (late_report): timers may
        #: fire that much late, twice over for a time_limit then its SIGKILL
        self.max_lag = 0.0
        #: when taskforce last crashed (see ``crash``)
        self.crashed_at = 0.0

    # ---------------------------------------------------------- helpers

    @property
    def s(self) -> Simulation:
        assert self.sim is not None
        return self.sim

    @property
    def u(self) -> Universe:
        assert self.universe is not None
        return self.universe

    def _present_names(self) -> set[str]:
        return {t.name for t in self.u.present()}

    def _requirement_problem(self, req: TaskTemplate) -> str | None:
        """Why ``req`` is not satisfied now, as the design defines it (None: it is).

        Read from the fake world, never from the core.  Where the design
        leaves room (a ``once`` task that left scope and came back) this errs
        on the side of "satisfied", so it never accuses the core wrongly.
        """
        u, s = self.u, self.s
        if not req.present:
            return "not in the config"
        if not u.in_scope(req):
            return "off or out of scope"
        if req.control in ("suspend", "event"):
            return None
        procs = [p for p in s.processes.values() if p.task == req.name]
        if req.control == "once":
            for i in range(req.count):
                slot = [p for p in procs if p.instance == i]
                if not any(p.leader for p in slot):
                    return f"slot {i} has never run"
                if any(p.present for p in slot):
                    return f"slot {i} is running"
            return None
        for i in range(req.count):
            leaders = [
                p for p in procs if p.instance == i and p.leader and p.alive and not p.leftover
            ]
            if not leaders:
                return f"slot {i} not running"
            leader = leaders[-1]
            if any(d.group for d in leader.received):
                return f"slot {i} is being stopped"
            if req.ready is None and s.now < leader.started_at + req.start_delay:
                return f"slot {i} is in its start_delay"
            if req.ready is not None and s.now < leader.started_at + req.ready_delay:
                return f"slot {i} is not ready"
        return None

    def _dependents(self, name: str) -> set[str]:
        """Tasks of the current config that require ``name``, directly or not."""
        found: set[str] = set()
        todo = [name]
        while todo:
            required = todo.pop()
            for t in self.u.present():
                if required in t.requires and t.name not in found:
                    found.add(t.name)
                    todo.append(t.name)
        return found

    def _observe(self, sim: Simulation, event: ev.Event, effect: fx.Effect) -> None:
        """Checks made at the moment an effect is performed."""
        where = f"t={sim.now:g} {type(effect).__name__} (on {type(event).__name__})"
        if isinstance(effect, fx.Spawn):
            self._check_spawn(sim, effect, where)
        elif isinstance(effect, fx.Signal) and self.stopping and effect.signal == "SIGTERM":
            leader = sim.processes.get(effect.pid)
            if leader is None or not leader.alive:
                return  # cleaning up after a leader that died by itself
            live = sorted(
                name
                for name in self._dependents(effect.task)
                if any(p.present and p.task == name for p in sim.processes.values())
            )
            if live:
                self.errors.append(
                    f"{where}: stopping {effect.task}[{effect.instance}] while tasks "
                    f"that require it still run: {live}"
                )
        elif isinstance(effect, fx.Exit):
            left = [p.pid for p in sim.processes.values() if p.present]
            if left:
                self.errors.append(f"{where}: Exit while processes {left} are left")

    def _check_spawn(self, sim: Simulation, effect: fx.Spawn, where: str) -> None:
        u = self.u
        where = f"{where} {effect.task}[{effect.instance}]"
        if self.stopping:
            self.errors.append(f"{where} after a stop request")
            return
        names = self._present_names()
        if effect.task not in names:
            self.errors.append(f"{where}: task is not in the config")
            return
        task = u.by_name(effect.task)
        if effect.instance >= u.wanted_slots(task):
            self.errors.append(
                f"{where}: slot not wanted (control {task.control}, count {task.count})"
            )
        wanted_argv = (task.program, "--slot", str(effect.instance), f"v{task.version}")
        state = sim.core.tasks.get(effect.task)
        if state is not None and state.rollout_halted and effect.argv[:-1] == wanted_argv[:-1]:
            # A rollout halted on the newest version (one of its processes
            # exited at the test's hand): an old process that ended comes
            # back as it was until the next change (core.rollout).
            wanted_argv = effect.argv
        if effect.argv != wanted_argv:
            self.errors.append(f"{where}: argv {effect.argv}, config says {wanted_argv}")
        for name in task.requires:
            if name not in names:
                continue
            problem = self._requirement_problem(u.by_name(name))
            if problem:
                self.errors.append(f"{where} while requirement {name} is unsatisfied: {problem}")

    def _expected_live(self, t: TaskTemplate, seen: frozenset[str] = frozenset()) -> bool:
        """A wait task that must be running once nothing is pending."""
        u = self.u
        if t.failing or t.control != "wait" or not u.in_scope(t) or t.name in seen:
            return False
        names = self._present_names()
        for name in t.requires:
            if name not in names:
                continue
            req = u.by_name(name)
            if not u.in_scope(req):
                return False
            if req.control in ("suspend", "event"):
                continue
            if req.control != "wait":
                return False
            if req.count and not self._expected_live(req, seen | {t.name}):
                return False
        return True

    def _start(self, universe: Universe, start: float = 0.0) -> None:
        self.universe = universe
        self.sim = Simulation(
            behaviours={t.name: t.behaviour for t in universe.tasks},
            failing={t.program for t in universe.tasks if t.failing},
            start=start,
        )
        self.sim.ready_delays.update({t.name: t.ready_delay for t in universe.tasks})
        self.sim.observers.append(self._observe)
        self.checked_steps = 0
        self.rejected_steps = set()
        self.sim.boot(universe.config(), roles=universe.roles)

    def _check_replay(self) -> None:
        divergence = replay(self.s.log)
        assert divergence is None, f"replay differs: {divergence}"

    # ------------------------------------------------------------ rules

    @initialize(universe=universes())
    def boot(self, universe: Universe) -> None:
        note(f"config: {universe.config()!r}; roles: {universe.roles!r}")
        note(
            "behaviours: "
            + repr({t.name: t.behaviour for t in universe.tasks})
            + "; failing: "
            + repr(sorted(t.program for t in universe.tasks if t.failing))
        )
        self._start(universe)

    @precondition(lambda self: self.sim is not None and bool(self.sim.alive()))
    @rule(pick=st.integers(0, 63), signal=st.sampled_from(("SIGKILL", "SIGTERM")))
    def kill_one(self, pick: int, signal: str) -> None:
        alive = self.s.alive()
        self.s.kill(alive[pick % len(alive)].pid, signal)

    @precondition(lambda self: self.sim is not None and bool(self.sim.alive()))
    @rule(pick=st.integers(0, 63), code=st.sampled_from((0, 1)))
    def exit_one(self, pick: int, code: int) -> None:
        alive = self.s.alive()
        self.s.exit(alive[pick % len(alive)].pid, code)

    @precondition(lambda self: self.sim is not None and bool(self.sim.alive()))
    @rule(
        pick=st.integers(0, 63),
        lag=st.sampled_from((0.05, 0.5, 2.0, 6.0)),
        how=st.sampled_from(("exit 0", "exit 1", "SIGKILL", "SIGTERM")),
    )
    def late_report(self, pick: int, lag: float, how: str) -> None:
        """The shell was held up: what happened reaches the core ``lag`` late."""
        s = self.s
        self.max_lag = max(self.max_lag, lag)
        s.stall(lag)
        alive = s.alive()
        pid = alive[pick % len(alive)].pid
        if how.startswith("exit"):
            s.exit(pid, int(how[-1]))
        else:
            s.kill(pid, how)

    @precondition(lambda self: self.sim is not None)
    @rule(dt=st.sampled_from((0.1, 0.25, 0.5, 0.9, 1.0, 1.5)))
    def advance_small(self, dt: float) -> None:
        self.s.advance(dt)

    @precondition(lambda self: self.sim is not None)
    @rule(dt=st.sampled_from((2.0, 2.5, 5.0, 5.5, 10.0, 31.0)))
    def advance_large(self, dt: float) -> None:
        self.s.advance(dt)

    @precondition(lambda self: self.sim is not None)
    @rule(pick=st.integers(0, 63))
    def touch(self, pick: int) -> None:
        paths = sorted({p for w in self.s.watches.values() for p in w.paths}) + ["/etc/motd"]
        self.s.touch(paths[pick % len(paths)])

    @precondition(lambda self: self.sim is not None)
    @rule(
        mutation=st.sampled_from(MUTATIONS),
        pick=st.integers(0, 63),
        count=st.sampled_from((0, 1, 2, 3)),
        control=st.sampled_from(CONTROLS),
        roles=st.sampled_from(ROLE_SETS),
    )
    def reload(
        self,
        mutation: str,
        pick: int,
        count: int,
        control: str,
        roles: tuple[str, ...] | None,
    ) -> None:
        u, s = self.u, self.s
        if mutation == "broken":
            self._reload_broken()
            return
        task = u.tasks[pick % len(u.tasks)]
        if mutation == "argv":
            task.version += 1
        elif mutation == "count":
            task.count = count
        elif mutation == "control":
            task.control = control
        elif mutation == "toggle":
            task.present = not task.present
        else:
            u.roles = roles
        if not u.present():
            task.present = True
        before = len(s.log)
        s.reload(u.config(), roles=u.roles)
        if mutation != "roles":
            # Only the task whose config changed may be stopped (DESIGN, Reload).
            for _, effects in s.log[before:]:
                for effect in effects:
                    if isinstance(effect, fx.Signal) and effect.group:
                        assert effect.task == task.name, (
                            f"changing {mutation} of {task.name} signalled "
                            f"{effect.task}[{effect.instance}]: {effect}"
                        )

    def _reload_broken(self) -> None:
        """A config naming an unknown requirement changes nothing that runs."""
        s = self.s
        config = dict(self.u.config())
        tasks = dict(config["tasks"])
        name = sorted(tasks)[0]
        tasks[name] = {**tasks[name], "requires": ("no-such-task",)}
        before = len(s.log)
        s.reload(freeze({**config, "tasks": tasks}), roles=self.u.roles)
        for _, effects in s.log[before:]:
            for effect in effects:
                assert not isinstance(
                    effect, (fx.Spawn, fx.Signal, fx.Watch, fx.Unwatch, fx.RunCommand)
                ), f"a rejected config changed something: {effect!r}"
        assert any("config rejected" in m for m in s.messages("error")[-1:])
        # Its error log is expected; any other error log is not.
        self.rejected_steps.update(range(before, len(s.log)))

    @precondition(lambda self: self.sim is not None)
    @rule()
    def settle(self) -> None:
        s, u = self.s, self.u
        quiet = s.settle(max_time=60.0)
        for pgid, (task, instance) in s.groups().items():
            t = next((x for x in u.tasks if x.name == task), None)
            wanted = u.wanted_slots(t) if t is not None else 0
            assert instance < wanted, (
                f"after settling, {task}[{instance}] still has group {pgid} "
                f"(present={t is not None and t.present}, control={t and t.control}, "
                f"count={t and t.count}, roles={u.roles})"
            )
        if not quiet:
            return
        running = s.running()
        for t in u.tasks:
            if not self._expected_live(t):
                continue
            for i in range(t.count):
                slot = s.core.slot(t.name, i)
                if slot is not None and slot.state.value == "failed":
                    # It hit its start limit (fast deaths at the test's
                    # hand): that it was due is checked in
                    # test_operator_properties, and it waits for a trigger.
                    continue
                pid = running.get((t.name, i))
                assert pid is not None, (
                    f"quiet, yet wait task {t.name}[{i}] has no process "
                    f"(requires {t.requires}, roles {t.roles})"
                )
                halted = s.core.tasks[t.name].rollout_halted
                assert halted or s.processes[pid].argv[-1] == f"v{t.version}", (
                    f"{t.name}[{i}] still runs {s.processes[pid].argv} after a reload "
                    f"asked for v{t.version}"
                )

    @precondition(lambda self: self.sim is not None)
    @rule(change=st.booleans())
    def crash(self, change: bool) -> None:
        """taskforce is SIGKILLed and started again (maybe with an edited
        config): what the old one left is stopped before anything runs in
        its place, so no slot ever has two process trees (``contract_kept``,
        ``one_process_per_slot``), and settling converges to the config."""
        self._check_replay()
        if change:
            self.u.tasks[0].version += 1
        self.s.crash(self.u.config(), roles=self.u.roles)
        self.crashed_at = self.s.now
        self.checked_steps = 0
        self.rejected_steps = set()

    @precondition(lambda self: self.sim is not None)
    @rule(reset=st.booleans())
    def request_stop(self, reset: bool) -> None:
        """Stop (or reset): every process reaped, then ``Exit``; then boot again."""
        s = self.s
        self.stopping = True
        s.request_stop(reset=reset)
        s.settle(max_time=600.0)
        assert s.finished is not None, "no Exit after a stop request and settling"
        assert s.finished.reset == reset
        left = [p for p in s.processes.values() if p.present]
        assert not left, f"processes left after Exit: {left}"
        self._check_replay()
        # The shell exits (or re-executes): a fresh core, the same world.
        self.stopping = False
        self._start(self.u, start=s.now)

    def _reset_twin(self, old: ev.Event) -> tuple[tuple[fx.Effect, ...], dict[str, Any]]:
        """What the core did for ``old`` -- the events the shell fed for a
        reset before the core decided on it -- fed to a copy of it now."""
        twin = self.s.core.shadow()
        try:
            return twin.handle(old), twin.snapshot()
        finally:
            twin.release()

    @precondition(lambda self: self.sim is not None)
    @rule(
        errors=st.lists(st.sampled_from(("config: bad", "roles: bad")), max_size=2).map(tuple),
        roles_missing=st.booleans(),
        again=st.lists(st.sampled_from(("config: bad", "roles: bad")), max_size=2).map(tuple),
        by_code=st.booleans(),
    )
    def request_reset(
        self, errors: tuple[str, ...], roles_missing: bool, again: tuple[str, ...], by_code: bool
    ) -> None:
        """A reset is asked for, the shell reporting what the files on disk
        hold.  Broken (or the roles file gone), it is refused: nothing stops,
        no slot changes, and the core does exactly what it did for the
        ``ConfigRejected`` the shell used to feed in its place.  Sound, it
        stops everything and ends in ``Exit(reset)``; a second request while
        it is under way joins it, however broken the files are then.  New
        code of taskforce's own (``by_code``) asks for a reset the same way."""
        s = self.s
        kept = s.roles_missing
        if roles_missing:
            s.roles_missing = "/etc/roles"
        found = errors + (("roles file /etc/roles not found",) if roles_missing else ())
        if found:
            refused = tuple(f"reset refused, {e}; nothing was stopped" for e in found)
            old = ev.ConfigRejected(s.now, "reset", refused[0], refused if len(refused) > 1 else ())
            want, state = self._reset_twin(old)
            mark = len(s.log)
            assert not s.request_reset("got SIGHUP", errors=errors), "a broken reset went ahead"
            self.rejected_steps.update(range(mark, len(s.log)))  # its error lines
            got = s.log[mark][1]
            assert got == want, f"a refused reset did {got}, not {want}"
            assert not any(isinstance(e, (fx.Signal, fx.StopCommand, fx.Exit)) for e in got)
            if len(s.log) == mark + 1:  # nothing followed from it: the same state
                assert s.core.snapshot() == state, "a refused reset changed the core"
            s.roles_missing = kept
            return
        s.roles_missing = None
        self.stopping = True
        if by_code:
            answer = s.feed(ev.FileChanged(s.now, ev.CODE_KEY, "/opt/taskforce/daemon.py"))
            assert fx.CheckReset("taskforce's own code changed (/opt/taskforce/daemon.py)") in (
                answer
            )
            assert s.core.shutdown is not None, "new code of taskforce's own did not reset it"
        else:
            assert s.request_reset("got SIGHUP"), "a reset with sound files was refused"
        if again:
            want, state = self._reset_twin(ev.StopRequested(s.now, reset=True, reason="-R"))
            mark = len(s.log)
            assert s.request_reset("-R", errors=again), "a reset under way was left"
            assert s.log[mark][1] == want, "a second reset did not join the one under way"
        s.settle(max_time=600.0)
        assert s.finished == fx.Exit(0, reset=True), f"{s.finished} after a reset"
        left = [p for p in s.processes.values() if p.present]
        assert not left, f"processes left after Exit: {left}"
        self._check_replay()
        self.stopping = False
        self._start(self.u, start=s.now)

    @precondition(lambda self: self.sim is not None)
    @rule(roles=st.booleans())
    def input_edited(self, roles: bool) -> None:
        """The config (or roles) file was written, as it is: the core asks
        for it to be read again, and what it holds -- the config in force --
        changes nothing that runs (a broken one, last given, is rejected
        again)."""
        s = self.s
        before, mark = s.running(), len(s.log)
        answer = s.feed(ev.FileChanged(s.now, ev.ROLES_KEY if roles else ev.CONFIG_KEY, "/etc/x"))
        assert fx.LoadInputs("roles" if roles else "config") in answer
        assert s.running() == before, "reading the same files again changed what runs"
        errors = [
            effect.message
            for _, effects in s.log[mark:]
            for effect in effects
            if isinstance(effect, fx.Log) and effect.level == "error"
        ]
        assert all("config rejected" in m for m in errors), errors
        self.rejected_steps.update(range(mark, len(s.log)))

    # ------------------------------------------------------- invariants

    @invariant()
    def contract_kept(self) -> None:
        if self.sim is None:
            return
        violations = list(self.s.violations)
        assert not violations, [str(v) for v in violations]
        assert not self.errors, self.errors

    @invariant()
    def one_process_per_slot(self) -> None:
        if self.sim is None:
            return
        slots: dict[tuple[str, int], set[int]] = {}
        for proc in self.s.processes.values():
            if proc.present:
                slots.setdefault((proc.task, proc.instance), set()).add(proc.pgid)
        doubled = {slot: groups for slot, groups in slots.items() if len(groups) > 1}
        assert not doubled, f"slots with two live process groups: {doubled}"

    @invariant()
    def core_view_matches(self) -> None:
        if self.sim is None:
            return
        s = self.s
        # What a crashed taskforce left is not the new core's process, but
        # it must know of it until it is gone.
        pending = set(s.core.leftovers)
        for proc in s.processes.values():
            if proc.leftover and proc.present and proc.pgid not in s.core.live_pids():
                slot = (proc.task, proc.instance)
                assert slot in pending, f"leftover pid {proc.pid} of {slot} forgotten"
        waiting = {
            proc.pgid
            for proc in s.processes.values()
            if proc.present and proc.leftover and (proc.task, proc.instance) in pending
        }
        groups = {pgid: slot for pgid, slot in s.groups().items() if pgid not in waiting}
        assert s.core.live_pids() == groups

    @invariant()
    def timer_matches(self) -> None:
        """The one armed timer is the core's next deadline."""
        if self.sim is None or self.s.finished:
            return
        assert self.s.timer == self.s.core.next_deadline()

    @invariant()
    def stops_are_bounded(self) -> None:
        """Nothing outlives a stop signal by more than the stop timeout, and
        nothing outlives its time_limit by more than that either."""
        if self.sim is None:
            return
        s = self.s
        slack = EPSILON + 2 * self.max_lag
        for proc in s.alive():
            if proc.leftover:
                # Stopped after the crash, dependents' leftovers first: one
                # stop timeout per level of requirements at the most.
                bound = self.crashed_at + STOP_TIMEOUT * (len(self.u.tasks) + 1)
                assert s.now <= bound + slack, (
                    f"leftover {proc.task}[{proc.instance}] pid {proc.pid} outlived "
                    f"the crash by {s.now - self.crashed_at:g}s"
                )
                continue
            stops = [d.at for d in proc.received if d.group]
            if stops:
                assert s.now <= stops[0] + STOP_TIMEOUT + slack, (
                    f"{proc.task}[{proc.instance}] pid {proc.pid} alive {s.now - stops[0]:g}s "
                    "after it was told to stop"
                )
            t = next((x for x in self.u.tasks if x.name == proc.task), None)
            if t is not None and t.time_limit:
                bound = proc.started_at + t.start_delay + t.time_limit + STOP_TIMEOUT
                assert s.now <= bound + slack, (
                    f"{proc.task}[{proc.instance}] pid {proc.pid} outlived its time_limit"
                )

    @invariant()
    def watches_follow_config(self) -> None:
        if self.sim is None or self.s.finished:
            return
        u = self.u
        wanted = {
            f"{t.name}#0": (t.conf,) for t in u.present() if t.action is not None and u.in_scope(t)
        }
        # A task with a failed slot has its start program watched, so that
        # installing it tries again.
        for t in u.present():
            task = self.s.core.tasks.get(t.name)
            if u.in_scope(t) and task and any(x.state.value == "failed" for x in task.slots):
                wanted[f"{t.name}#failed"] = task.spec.processes[0].argv[:1]
        assert {k: w.paths for k, w in self.s.watches.items()} == wanted

    @invariant()
    def new_steps_are_sound(self) -> None:
        """Every event and effect survives the codec through JSON, and the
        core logs no error except when handed a broken config."""
        if self.sim is None:
            return
        for index in range(self.checked_steps, len(self.s.log)):
            event, effects = self.s.log[index]
            assert roundtrip(event) == event
            for effect in effects:
                assert roundtrip(effect) == effect
                if isinstance(effect, fx.Log) and index not in self.rejected_steps:
                    assert effect.level != "error", effect.message
        self.checked_steps = len(self.s.log)

    def teardown(self) -> None:
        if self.sim is not None:
            self._check_replay()


TestCoreMachine = CoreMachine.TestCase


# ------------------------------------------------------------ plain props

texts = st.text(st.characters(codec="utf-8"), max_size=20)
floats = st.floats(allow_nan=False, width=64)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), floats, texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(texts, inner, max_size=4),
    ),
    max_leaves=12,
)
str_dicts = st.dictionaries(texts, texts, max_size=4)
times = st.floats(min_value=0, max_value=1e9, allow_nan=False)
pids = st.integers(1, 2**22)
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12)
signals = st.sampled_from(("SIGTERM", "SIGKILL", "SIGHUP", "SIGINT"))

events = st.one_of(
    st.builds(ev.Booted, at=times, environ=str_dicts, host=texts, fqdn=texts, pid=pids, ppid=pids),
    st.builds(
        ev.ConfigLoaded,
        at=times,
        config=st.dictionaries(texts, json_values, max_size=4),
        roles=st.one_of(st.none(), st.lists(texts, max_size=3).map(tuple)),
        role_values=str_dicts,
        source=st.sampled_from(("start", "config", "roles", "request")),
    ),
    st.builds(ev.ConfigRejected, at=times, source=texts, error=texts),
    st.builds(
        ev.ProcessStarted,
        at=times,
        task=names,
        instance=st.integers(0, 9),
        generation=st.integers(0, 10**6),
        pid=pids,
    ),
    st.builds(
        ev.SpawnFailed,
        at=times,
        task=names,
        instance=st.integers(0, 9),
        generation=st.integers(0, 10**6),
        error=texts,
    ),
    st.builds(
        ev.ProcessExited,
        at=times,
        pid=pids,
        exit_code=st.one_of(st.none(), st.integers(0, 255)),
        signal=st.one_of(st.none(), signals),
        group_alive=st.booleans(),
    ),
    st.builds(ev.GroupEmptied, at=times, pgid=pids),
    st.builds(
        ev.CommandExited,
        at=times,
        task=names,
        name=names,
        pid=pids,
        exit_code=st.one_of(st.none(), st.integers(0, 255)),
        signal=st.one_of(st.none(), signals),
        error=texts,
    ),
    st.builds(ev.FileChanged, at=times, key=texts, path=texts),
    st.builds(ev.TimerFired, at=times),
    st.builds(ev.StopRequested, at=times, reset=st.booleans(), reason=texts),
    st.builds(ev.ResetAsked, at=times, reason=texts),
    st.builds(
        ev.ResetRequested,
        at=times,
        reason=texts,
        errors=st.lists(texts, max_size=3).map(tuple),
        roles_missing=st.one_of(st.none(), texts),
    ),
    st.builds(
        ev.ControlRequested,
        at=times,
        request=st.integers(0, 2**31),
        action=texts,
        args=st.dictionaries(texts, json_values, max_size=3),
    ),
)

argvs = st.lists(texts, min_size=1, max_size=4).map(tuple)
effects = st.one_of(
    st.builds(
        fx.Spawn,
        task=names,
        instance=st.integers(0, 9),
        generation=st.integers(0, 10**6),
        argv=argvs,
        env=str_dicts,
        cwd=st.one_of(st.none(), texts),
        user=st.one_of(st.none(), texts),
        group=st.one_of(st.none(), texts),
        procname=st.one_of(st.none(), texts),
        pidfile=st.one_of(st.none(), texts),
    ),
    st.builds(
        fx.Signal,
        task=names,
        instance=st.integers(0, 9),
        pid=pids,
        signal=signals,
        group=st.booleans(),
    ),
    st.builds(
        fx.RunCommand, task=names, instance=st.integers(0, 9), name=names, argv=argvs, env=str_dicts
    ),
    st.builds(
        fx.Watch,
        key=texts,
        kind=st.sampled_from(("file", "executable", "python")),
        paths=st.lists(texts, max_size=3).map(tuple),
        search_path=texts,
    ),
    st.builds(fx.Unwatch, key=texts),
    st.builds(fx.ArmTimer, at=st.one_of(st.none(), times)),
    st.builds(
        fx.Log,
        level=st.sampled_from(("debug", "info", "warning", "error")),
        message=texts,
        task=st.one_of(st.none(), names),
    ),
    st.builds(
        fx.Reply, request=st.integers(0, 2**31), code=st.integers(100, 599), body=json_values
    ),
    st.builds(fx.Exit, code=st.integers(0, 255), reset=st.booleans()),
    st.builds(fx.LoadInputs, source=texts),
    st.builds(fx.CheckReset, reason=texts),
)


@given(events)
def test_codec_round_trips_every_event(event: ev.Event) -> None:
    assert roundtrip(event) == event
    assert type(roundtrip(event)) is type(event)


@given(effects)
def test_codec_round_trips_every_effect(effect: fx.Effect) -> None:
    assert roundtrip(effect) == effect
    assert type(roundtrip(effect)) is type(effect)


# A context whose tags form a DAG: name k may only mention names below k, so
# every chain is shorter than MAX_PASSES and expansion must reach its fixpoint.
TAG_NAMES = tuple(f"n{i}" for i in range(6))
assert len(TAG_NAMES) < MAX_PASSES


@st.composite
def dag_contexts(draw: st.DrawFn) -> dict[str, str | None]:
    ctx: dict[str, str | None] = {}
    plain = st.text(st.sampled_from("ab-/ ."), max_size=4)
    for index, name in enumerate(TAG_NAMES):
        if draw(st.integers(0, 5)) == 0:
            ctx[name] = None
            continue
        parts = draw(
            st.lists(
                st.one_of(
                    plain, st.sampled_from(TAG_NAMES[:index] + ("unknown",)).map("{{{}}}".format)
                )
                if index
                else plain,
                max_size=3,
            )
        )
        ctx[name] = "".join(parts)
    return ctx


@st.composite
def tagged_texts(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.text(st.sampled_from("xy{} "), max_size=3),
                st.sampled_from(TAG_NAMES + ("unknown",)).map("{{{}}}".format),
            ),
            max_size=4,
        )
    )
    return "".join(parts)


@given(tagged_texts(), dag_contexts())
def test_expand_reaches_a_fixpoint(text: str, ctx: dict[str, str | None]) -> None:
    once = expand(text, ctx)
    if once is None:
        return
    assert expand(once, ctx) == once
    for name, value in ctx.items():
        if value is not None and "{" not in value:
            assert "{" + name + "}" not in once


@given(st.text(st.characters(blacklist_characters="{"), max_size=30), dag_contexts())
def test_expand_leaves_untagged_text_alone(text: str, ctx: dict[str, str | None]) -> None:
    assert expand(text, ctx) == text


@given(
    tagged_texts(),
    st.dictionaries(
        st.sampled_from(TAG_NAMES),
        st.one_of(st.none(), tagged_texts()),
        max_size=len(TAG_NAMES),
    ),
)
def test_expand_terminates_on_any_context(text: str, ctx: dict[str, str | None]) -> None:
    # Cycles included: expansion stops after MAX_PASSES, with text or None,
    # or refuses a text that grows without bound.
    try:
        out = expand(text, ctx)
    except ContextError:
        return
    assert out is None or isinstance(out, str)


def test_expand_of_a_cyclic_define_is_bounded() -> None:
    ctx: dict[str, str | None] = {"a": "{a}{a}{a}{a}"}
    try:
        out = expand("{a}", ctx)
    except ContextError:
        return  # refusing a cycle is fine
    assert out is not None and len(out) <= 64 * 1024, f"grew to {len(out or '')} characters"
