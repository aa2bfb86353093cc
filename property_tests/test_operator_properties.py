"""Properties of what operators do, driven through ``taskforce.simulator``.

- An operator's override (a stop, a count) survives every config event that
  leaves the task's own entry as it was -- a comment, an edit of another
  task, a roles change -- and ends when a reload is asked for or the task's
  own entry changes.
- A slot that hit its start limit (``failed``) is never started again
  without a trigger: an operator's request, a config event, or a change of
  its executable.  And it fails only when it really was started ``burst``
  times within ``interval`` seconds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, note
from hypothesis import strategies as st

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core import status
from taskforce.core.codec import freeze
from taskforce.core.lifecycle import SlotState
from taskforce.simulator import Simulation, replay

NAMES = ("alpha", "bravo", "charlie")


def _config(versions: dict[str, int], counts: dict[str, int], failing: set[str]) -> Any:
    tasks = {}
    for name in NAMES:
        program = f"/missing/{name}" if name in failing else f"/usr/bin/{name}d"
        tasks[name] = {
            "commands": {"start": (program, f"v{versions[name]}")},
            "count": counts[name],
            "roles": (name,) if name == "charlie" else None,
            # charlie's executable is watched: a change to it is a trigger
            "events": ({"type": "self", "command": "stop"},) if name == "charlie" else None,
        }
        tasks[name] = {key: value for key, value in tasks[name].items() if value is not None}
    return freeze({"tasks": tasks, "settings": {}})


unrelated = st.one_of(
    st.just(("comment",)),
    st.tuples(st.just("edit"), st.sampled_from(NAMES[1:]), st.integers(1, 3)),
    st.tuples(st.just("roles"), st.sampled_from(((), ("charlie",), None))),
    st.tuples(st.just("advance"), st.sampled_from((0.3, 1.0, 7.0))),
    st.tuples(st.just("kill"), st.integers(0, 20)),
)


@given(
    override=st.sampled_from((("control", "off"), ("count", "3"), ("control", "suspend"))),
    steps=st.lists(unrelated, max_size=12),
    end=st.sampled_from(("revert", "own edit", "operator")),
)
def test_an_override_survives_unrelated_edits(
    override: tuple[str, str], steps: list[tuple[Any, ...]], end: str
) -> None:
    versions = dict.fromkeys(NAMES, 1)
    counts = dict.fromkeys(NAMES, 1)
    roles: tuple[str, ...] | None = None
    sim = Simulation()
    sim.boot(_config(versions, counts, set()), roles=roles)
    action, value = override
    sim.control(1, action, {"alpha": value})
    assert sim.replies[-1].code == 202, sim.replies[-1]
    wanted = 0 if action == "control" else int(value)
    for step in steps:
        note(repr(step))
        if step[0] == "comment":
            sim.reload(_config(versions, counts, set()))
        elif step[0] == "edit":
            versions[step[1]] += 1
            counts[step[1]] = step[2]
            sim.reload(_config(versions, counts, set()))
        elif step[0] == "roles":
            roles = step[1]
            sim.reload(roles=roles)
        elif step[0] == "advance":
            sim.advance(step[1])
        else:
            alive = sim.alive()
            if alive:
                sim.kill(alive[step[1] % len(alive)].pid)
        sim.settle(max_time=60.0)
        shown = status.tasks_status(sim.core)["alpha"]
        assert shown["overrides"] == {action: value if action == "control" else int(value)}
        alpha = sorted(i for (task, i) in sim.running() if task == "alpha")
        assert len(alpha) <= wanted, f"alpha runs {alpha} under override {override}"
    if end == "revert":
        sim.reload(_config(versions, counts, set()), requested=True)
    elif end == "own edit":
        versions["alpha"] += 1
        sim.reload(_config(versions, counts, set()))
    elif action == "control":
        sim.control(2, "start", {"tasks": ["alpha"]})
    else:
        sim.control(2, "count", {"alpha": "1"})
    sim.settle(max_time=60.0)
    assert status.tasks_status(sim.core)["alpha"]["overrides"] == {}
    assert sorted(i for (task, i) in sim.running() if task == "alpha") == [0]
    assert not sim.violations
    assert replay(sim.log) is None


def _concerns(event: ev.Event, task: str, before: Any) -> bool:
    """Whether ``event`` may let ``task``'s failed slot start again: a
    request naming it, a config event that changed its entry, a change of
    its own watched executable."""
    if isinstance(event, ev.ControlRequested):
        named = {str(key) for key in event.args} | {
            str(item)
            for value in event.args.values()
            for item in (value if isinstance(value, (list, tuple)) else (value,))
        }
        return task in named
    if isinstance(event, ev.ConfigLoaded):
        return bool(event.config["tasks"].get(task) != before["tasks"].get(task))
    if isinstance(event, ev.FileChanged):
        return event.key.startswith(f"{task}#")
    return False


world = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from((0.1, 0.5, 2.0, 11.0))),
    st.tuples(st.just("kill"), st.integers(0, 20)),
    st.tuples(st.just("start"), st.sampled_from(NAMES)),
    st.tuples(st.just("restart"), st.sampled_from(NAMES)),
    st.tuples(st.just("stop"), st.sampled_from(NAMES)),
    st.tuples(
        st.just("comment"),
    ),
    st.tuples(st.just("edit"), st.sampled_from(NAMES)),
    st.tuples(st.just("fix"), st.sampled_from(NAMES)),
    st.tuples(st.just("touch"), st.sampled_from(NAMES)),
    st.tuples(
        st.just("revert"),
    ),
)


@given(
    failing=st.sets(st.sampled_from(NAMES), min_size=1),
    steps=st.lists(world, max_size=25),
)
def test_a_failed_slot_starts_again_only_on_a_trigger(
    failing: set[str], steps: list[tuple[Any, ...]]
) -> None:
    versions = dict.fromkeys(NAMES, 1)
    counts = dict.fromkeys(NAMES, 1)
    broken = set(failing)
    sim = Simulation(failing={f"/missing/{name}" for name in NAMES})
    failed: set[tuple[str, int]] = set()
    spawned: dict[tuple[str, int], list[float]] = {}
    errors: list[str] = []

    def observe(s: Simulation, event: ev.Event, effect: fx.Effect) -> None:
        if isinstance(effect, fx.Spawn):
            where = (effect.task, effect.instance)
            if where in failed:
                errors.append(f"t={s.now:g} {where} started again on {type(event).__name__}")
            spawned.setdefault(where, []).append(s.now)
        elif isinstance(effect, fx.Log) and effect.task is not None:
            for instance in range(3):
                where = (effect.task, instance)
                name = f"{effect.task}[{instance}]"
                if effect.message.startswith(name) and "start limit hit" in effect.message:
                    burst, interval = 5, 10.0
                    recent = [at for at in spawned.get(where, ()) if s.now - at <= interval]
                    if len(recent) < burst:
                        errors.append(f"t={s.now:g} {name} failed after {recent} starts")
                    failed.add(where)
                elif effect.message.startswith(f"{name}: failed state cleared"):
                    if not _concerns(event, effect.task, before[0]):
                        errors.append(f"t={s.now:g} {name} cleared on {type(event).__name__}")
                    failed.discard(where)

    sim.observers.append(observe)
    #: the config before the one being loaded
    before = [_config(versions, counts, broken)]
    sim.boot(before[0])
    request = 0
    for step in steps:
        note(repr(step))
        request += 1
        kind = step[0]
        if kind == "advance":
            sim.advance(step[1])
        elif kind == "kill":
            alive = sim.alive()
            if alive:
                sim.kill(alive[step[1] % len(alive)].pid)
        elif kind in ("start", "stop"):
            args = {"tasks": [step[1]]} if kind == "start" else {step[1]: "off"}
            sim.control(request, "start" if kind == "start" else "control", args)
        elif kind == "restart":
            sim.control(request, "restart", {"task": step[1]})
        elif kind == "comment":
            sim.reload(_config(versions, counts, broken))
        elif kind == "edit":
            versions[step[1]] += 1
            sim.reload(_config(versions, counts, broken))
        elif kind == "fix":
            broken.discard(step[1])
            sim.reload(_config(versions, counts, broken))
        elif kind == "touch":
            was_failed = (step[1], 0) in failed
            sim.touch(f"/missing/{step[1]}" if step[1] in broken else f"/usr/bin/{step[1]}d")
            # A failed task's program is watched: its change is a fresh try.
            assert not was_failed or (step[1], 0) not in failed, f"{step[1]} still failed"
        else:
            sim.reload(_config(versions, counts, broken), requested=True)
        before[0] = sim.config
        assert not errors, errors
    sim.advance(60.0)
    assert not errors, errors
    for name in NAMES:
        for slot in sim.core.tasks[name].slots:
            if name in broken and slot.state is SlotState.FAILED:
                assert (name, slot.instance) in failed
    assert not sim.violations
    assert replay(sim.log) is None
