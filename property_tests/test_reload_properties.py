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
        defines = {}
        if draw(st.booleans()):
            defines["LEVEL"] = draw(st.sampled_from(("1", "2")))
        if draw(st.integers(0, 3)) == 0:
            # Its own value hides the roles file's (see role_values below).
            defines["Task_role_dc"] = "pinned"
        if defines:
            task["defines"] = defines
        tasks[name] = task
    return freeze({"tasks": tasks})


role_sets = st.sampled_from((None, (), ("web",), ("db",), ("web", "db")))
#: The value of a ``dc=VALUE`` line in the roles file, or None for no such line.
dc_values = st.sampled_from((None, "eu-west-1", "us-east-1", ""))


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


def booted(
    config: dict[str, Any], roles: tuple[str, ...] | None, dc: str | None = None
) -> Simulation:
    sim = Simulation()
    names, values = with_dc(roles, dc)
    sim.boot(config, names, role_values=values)
    sim.settle()
    return sim


def with_dc(
    roles: tuple[str, ...] | None, dc: str | None
) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """Roles and values of a roles file that has ``dc=VALUE`` too (when
    ``dc`` is not None and there is a roles file at all)."""
    if roles is None or dc is None:
        return roles, {}
    return (*roles, "dc"), {"dc": dc}


def running_pids(sim: Simulation) -> dict[tuple[str, int], int]:
    return {slot: pid for slot, pid in sim.running().items()}


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


# ---------------------------------------------------------------------------
# Roles as the original defines them: a value reaches every environment, a
# bare role none.


@given(configs(), role_sets, dc_values)
def test_a_role_value_reaches_every_process_and_a_bare_role_none(
    config: dict[str, Any], roles: Any, dc: str | None
) -> None:
    sim = booted(config, roles, dc)
    for _, spawn in sim.spawns():
        pinned = "Task_role_dc" in (config["tasks"][spawn.task].get("defines") or {})
        exported = {k: v for k, v in spawn.env.items() if k.startswith("Task_role_")}
        if pinned:
            assert exported == {"Task_role_dc": "pinned"}, spawn
        elif roles is not None and dc is not None:
            assert exported == {"Task_role_dc": dc}, spawn
        else:
            assert exported == {}, spawn


@given(configs(), role_sets, role_sets, dc_values)
def test_a_bare_role_edit_restarts_nothing_that_stays_in_scope(
    config: dict[str, Any], roles_a: Any, roles_b: Any, dc: str | None
) -> None:
    if roles_a is None or roles_b is None:
        dc = None  # no roles file, no values: keep them out of this edit
    sim = booted(config, roles_a, dc)
    before = running_pids(sim)
    sim.reload(config, *with_dc(roles_b, dc))
    sim.settle()
    after = running_pids(sim)
    for slot, pid in before.items():
        if slot in after:
            assert after[slot] == pid, f"{slot} restarted by a bare-role edit"
    if roles_a is not None and roles_b is not None:
        # The same as the host would run from scratch.
        fresh = booted(config, roles_b, dc)
        gated = {name for name, task in fresh.core.tasks.items() if task.waiting_on}
        assert ungated(running_set(sim), gated) == ungated(running_set(fresh), gated)


@given(configs(), role_sets.filter(lambda r: r is not None), dc_values, dc_values)
def test_a_role_value_change_restarts_exactly_the_processes_whose_environment_changes(
    config: dict[str, Any], roles: Any, dc_a: str | None, dc_b: str | None
) -> None:
    sim = booted(config, roles, dc_a)
    before = running_pids(sim)
    sim.reload(config, *with_dc(roles, dc_b))
    sim.settle()
    after = running_pids(sim)
    for (name, instance), pid in before.items():
        pinned = "Task_role_dc" in (config["tasks"][name].get("defines") or {})
        changed = dc_a != dc_b and not pinned
        assert (after.get((name, instance)) != pid) == changed, (name, instance, dc_a, dc_b)
