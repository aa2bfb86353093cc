"""Property tests of health checks (issue 13: checks cannot hang).

A random world of tasks with a ``check`` command (random interval, timeout
and failure threshold), whose checks pass, fail, take a while or hang, as
the world decides between steps.  It kills processes, lets time pass,
reloads a config that restarts a task, and finally asks taskforce to stop.
Promises checked after every step:

- no check runs longer than its ``check_timeout`` (it is killed then);
- a check runs only while its slot's process does: none outlives its
  slot's stop, a restart, or taskforce's shutdown;
- a slot is restarted for its health only after exactly ``check_failures``
  checks of that process failed in a row (a timeout counts as a failure);
- at the end the recorded run replays exactly.
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import freeze
from taskforce.core.lifecycle import UP_STATES
from taskforce.simulator import HANG, IGNORE_TERM, TERM, FakeCommand, Simulation, replay

NAMES = ("a", "b", "c")
#: what a check does: (exit code, seconds it takes)
OUTCOMES = ((0, 0.0), (1, 0.0), (0, 0.4), (2, 0.7), (0, HANG), (0, 30.0))


def _failed(run: FakeCommand) -> bool:
    return run.killed_by is not None or run.exit_code != 0


class CheckWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulation()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.restarts_judged = 0
        #: runs that ended within their timeout
        self.judged: set[int] = set()

    def _config(self) -> dict[str, Any]:
        tasks = {}
        for name, task in self.tasks.items():
            tasks[name] = {**task, "defines": {"VERSION": str(task["version"])}}
            del tasks[name]["version"]
        return cast(dict[str, Any], freeze({"tasks": tasks, "settings": {}}))

    @initialize(
        specs=st.lists(
            st.tuples(
                st.sampled_from((0.5, 1.0, 3.0)),
                st.sampled_from((None, 0.25, 1.0, 5.0)),
                st.integers(1, 3),
                st.sampled_from((TERM, IGNORE_TERM)),
                st.integers(1, 2),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def boot(self, specs: list[tuple[float, float | None, int, str, int]]) -> None:
        for name, (interval, timeout, failures, behaviour, count) in zip(
            NAMES, specs, strict=False
        ):
            task: dict[str, Any] = {
                "commands": {"start": (f"/usr/sbin/{name}d",), "check": ("/usr/bin/probe", name)},
                "check_interval": interval,
                "check_failures": failures,
                "count": count,
                "version": 0,
            }
            if timeout is not None:
                task["check_timeout"] = timeout
            self.tasks[name] = task
            self.sim.behaviours[name] = behaviour
        self.sim.observers.append(self._judge_restart)
        self.sim.boot(self._config())

    def _timeout(self, name: str) -> float:
        task = self.tasks[name]
        return float(task.get("check_timeout", task["check_interval"]))

    def _judge_restart(self, sim: Simulation, event: ev.Event, effect: fx.Effect) -> None:
        """A restart for health comes after exactly check_failures failures in a row."""
        if not (isinstance(effect, fx.Log) and ") restarted: health check" in effect.message):
            return
        name, _, rest = effect.message.partition("[")
        instance = int(rest.split("]", 1)[0])
        # "web[0] (pid 1005) restarted: ...": the checks of that process are
        # the runs given a pid after it (pids are handed out in order)
        process = int(rest.split("(pid ", 1)[1].split(")", 1)[0])
        runs = sorted(
            (
                run
                for run in sim.runs.values()
                if (run.effect.task, run.effect.instance) == (name, instance)
                and run.effect.name == "check"
                and run.pid > process
                and run.ended_at is not None
            ),
            key=lambda run: (run.ended_at or 0.0, run.pid),
        )
        streak = 0
        for run in reversed(runs):
            if not _failed(run):
                break
            streak += 1
        wanted = self.tasks[name]["check_failures"]
        assert streak == wanted, (effect.message, streak, wanted, runs)
        self.restarts_judged += 1

    # ---------------------------------------------------------- the world

    @precondition(lambda self: self.sim.finished is None)
    @rule(name=st.sampled_from(NAMES), outcome=st.sampled_from(OUTCOMES))
    def checks_behave(self, name: str, outcome: tuple[int, float]) -> None:
        code, seconds = outcome
        self.sim.command_codes[(name, "check")] = code
        self.sim.command_durations[(name, "check")] = seconds

    @rule(seconds=st.sampled_from((0.1, 0.3, 1.0, 2.5, 7.0)))
    def time_passes(self, seconds: float) -> None:
        self.sim.advance(seconds)

    @precondition(lambda self: self.sim.finished is None and self.sim.running())
    @rule(data=st.data())
    def a_process_dies(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.sim.running().values())))
        self.sim.kill(pid)

    @precondition(lambda self: self.sim.finished is None and self.sim.core.shutdown is None)
    @rule(name=st.sampled_from(NAMES))
    def its_config_changes(self, name: str) -> None:
        if name in self.tasks:
            self.tasks[name]["version"] += 1
            self.sim.reload(self._config())

    @precondition(lambda self: self.sim.finished is None)
    @rule()
    def taskforce_is_asked_to_stop(self) -> None:
        self.sim.request_stop(reason="test")
        self.sim.settle(max_time=120.0)
        assert self.sim.finished is not None

    # ---------------------------------------------------------- promises

    @invariant()
    def no_check_outlives_its_timeout(self) -> None:
        for pid in sorted(set(self.sim.runs) - self.judged):
            run = self.sim.runs[pid]
            ended = self.sim.now if run.ended_at is None else run.ended_at
            limit = self._timeout(run.effect.task)
            assert ended - run.started_at <= limit + 1e-9, (run, limit)
            if run.ended_at is not None:
                self.judged.add(pid)  # (its time is known for good)

    @invariant()
    def a_check_runs_only_beside_its_process(self) -> None:
        for run in self.sim.running_commands():
            slot = self.sim.core.slot(run.effect.task, run.effect.instance)
            assert slot is not None and slot.state in UP_STATES, run
            assert slot.check_run == run.effect.run, (run, slot.check_run)
            assert slot.pid in self.sim.running().values(), run
        if self.sim.finished is not None:
            assert not self.sim.running_commands()

    @invariant()
    def no_running_slot_is_past_its_threshold(self) -> None:
        for name, task in self.sim.core.tasks.items():
            for slot in task.slots:
                if slot.state in UP_STATES:
                    assert slot.check_fails < task.spec.check_failures, (name, slot)

    @invariant()
    def the_contract_holds(self) -> None:
        assert not self.sim.violations, [str(v) for v in self.sim.violations]

    def teardown(self) -> None:
        note(f"restarts for health judged: {self.restarts_judged}")
        assert replay(self.sim.log) is None


TestChecks = CheckWorld.TestCase
