"""Properties of reload: the core's config diff restarts exactly what differs.

Configs are drawn over a small pool of task names so that two draws share
tasks; every run is in the simulator, so "settled" is exact.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from taskforce.core import effects as fx
from taskforce.core.codec import freeze
from taskforce.simulator import Simulation

NAMES = ("alpha", "beta", "gamma", "delta", "eps")
ROLES = ("web", "db")


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    names.sort(key=NAMES.index)
    tasks: dict[str, Any] = {}
    for position, name in enumerate(names):
        task: dict[str, Any] = {
            "commands": {"start": (f"/bin/{name}", draw(st.sampled_from(("one", "two"))))},
            "count": draw(st.integers(0, 3)),
            "control": draw(st.sampled_from(("wait", "wait", "wait", "suspend", "off"))),
        }
        roles = draw(st.sampled_from((None, ("web",), ("db",), ("web", "db"))))
        if roles:
            task["roles"] = roles
        earlier = names[:position]
        if earlier and draw(st.booleans()):
            task["requires"] = (draw(st.sampled_from(earlier)),)
        if draw(st.booleans()):
            task["defines"] = {"LEVEL": draw(st.sampled_from(("1", "2")))}
        tasks[name] = task
    return freeze({"tasks": tasks})


role_sets = st.sampled_from((None, (), ("web",), ("db",), ("web", "db")))


def running_set(sim: Simulation) -> dict[tuple[str, int], tuple[str, ...]]:
    """What runs, by slot, with the argv it runs."""
    argv = {}
    for _, spawn in sim.spawns():
        argv[(spawn.task, spawn.instance, spawn.generation)] = spawn.argv
    out = {}
    for process in sim.alive():
        if process.leader and process.present:
            out[(process.task, process.instance)] = argv[
                (process.task, process.instance, process.generation)
            ]
    return out


def booted(config: dict[str, Any], roles: tuple[str, ...] | None) -> Simulation:
    sim = Simulation()
    sim.boot(config, roles)
    sim.settle()
    return sim


@given(configs(), role_sets)
def test_reloading_the_same_config_does_nothing(config: dict[str, Any], roles: Any) -> None:
    sim = booted(config, roles)
    before = len(sim.log)
    sim.reload(config, roles)
    sim.settle()
    for _, effects in sim.log[before:]:
        acting = [e for e in effects if isinstance(e, (fx.Spawn, fx.Signal, fx.RunCommand))]
        assert not acting, acting


@given(configs(), configs(), role_sets, role_sets)
def test_a_then_b_settles_like_b_from_scratch(
    a: dict[str, Any], b: dict[str, Any], roles_a: Any, roles_b: Any
) -> None:
    sim = booted(a, roles_a)
    sim.reload(b, roles_b)
    sim.settle()
    fresh = booted(b, roles_b)
    # A requirement gates only a start: a task already running when B adds
    # an unmet requirement keeps running, while a fresh B would wait.
    gated = {name for name, task in fresh.core.tasks.items() if task.waiting_on}
    assert ungated(running_set(sim), gated) == ungated(running_set(fresh), gated)


def ungated(running: dict[tuple[str, int], Any], gated: set[str]) -> dict[tuple[str, int], Any]:
    return {slot: argv for slot, argv in running.items() if slot[0] not in gated}


@given(configs(), configs(), role_sets)
def test_a_task_whose_spec_did_not_change_keeps_its_processes(
    a: dict[str, Any], b: dict[str, Any], roles: Any
) -> None:
    sim = booted(a, roles)
    before = sim.running()
    sim.reload(b, roles)
    sim.settle()
    after = sim.running()
    for name, task in a["tasks"].items():
        if b["tasks"].get(name) != task:
            continue
        for (slot_task, instance), pid in before.items():
            if slot_task == name:
                assert after.get((slot_task, instance)) == pid, f"{name}[{instance}] restarted"


edits = st.lists(
    st.one_of(
        st.tuples(st.just("config"), configs()),
        st.tuples(st.just("roles"), role_sets),
        st.tuples(st.just("broken"), st.none()),
        st.tuples(st.just("roles_deleted"), st.none()),
    ),
    max_size=6,
)


@given(configs(), role_sets, edits)
def test_any_edit_sequence_settles_to_the_last_valid_config_and_current_roles(
    config: dict[str, Any], roles: Any, changes: list[tuple[str, Any]]
) -> None:
    sim = booted(config, roles)
    for kind, value in changes:
        if kind == "config":
            config = value
            sim.reload(config)  # with the roles file as it is (maybe deleted)
        elif kind == "roles":
            roles = value
            sim.reload(config, roles)
        elif kind == "roles_deleted":
            sim.delete_roles()  # the current roles stay
        else:
            sim.reject("tasks.alpha.count: not a number")
        sim.settle()
    fresh = booted(config, roles)
    gated = {name for name, task in fresh.core.tasks.items() if task.waiting_on}
    assert ungated(running_set(sim), gated) == ungated(running_set(fresh), gated)


@given(configs(), role_sets, st.one_of(st.none(), configs()))
def test_deleting_the_roles_file_never_changes_which_tasks_run(
    config: dict[str, Any], roles: Any, edited: dict[str, Any] | None
) -> None:
    sim = booted(config, roles)
    before = running_set(sim)
    effects = len(sim.effects(fx.Spawn)) + len(sim.effects(fx.Signal))
    sim.delete_roles("/etc/roles")
    sim.settle()
    assert running_set(sim) == before
    assert len(sim.effects(fx.Spawn)) + len(sim.effects(fx.Signal)) == effects
    assert any("roles file /etc/roles is missing" in m for m in sim.messages("warning"))
    if edited is not None:
        # A config edited meanwhile is applied with the roles kept.
        sim.reload(edited)
        sim.settle()
        fresh = booted(edited, roles)
        gated = {name for name, task in fresh.core.tasks.items() if task.waiting_on}
        assert ungated(running_set(sim), gated) == ungated(running_set(fresh), gated)
    # The file comes back with other roles: applied as usual.
    sim.reload(roles=("db",))
    sim.settle()
    fresh = booted(edited if edited is not None else config, ("db",))
    gated = {name for name, task in fresh.core.tasks.items() if task.waiting_on}
    assert ungated(running_set(sim), gated) == ungated(running_set(fresh), gated)
