"""Property tests of ``nowait`` and ``adopt`` daemons found by pidfile (issue 11).

A random world of daemonizing tasks (``nowait``, ``adopt``) and plain ones
(``wait``), whose daemons write their pidfiles after random delays (within
``pidfile_timeout``), some of which run as ``nobody`` and forge their
pidfile (it names a stranger: a process outside every slot), and some
``nowait`` daemons fork a worker that ignores SIGTERM (it outlives its
daemon unless taskforce kills the slot, also when the daemon dies before
its pidfile names it).  The world
kills processes, lets time pass, stops and starts tasks over the control
path, and finally asks taskforce to stop, at a random moment -- often while
a pidfile is still awaited.  Two promises are checked:

- after shutdown completes, no process of any slot is alive, except an
  ``adopt`` daemon, left running on purpose (one per slot, the one its
  pidfile names): a daemon's worker is stopped with its slot, whether the
  daemon died on its own or was stopped;
- no signal is ever sent to a pid outside the slots.
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, note
from hypothesis import strategies as st

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import freeze
from taskforce.simulator import (
    DAEMON_WITH_WORKER,
    DAEMONIZE,
    IGNORE_TERM,
    TERM,
    Simulation,
    replay,
)

PIDFILE_TIMEOUT = 3.0
DELAYS = (0.0, 0.05, 0.3, 1.0, 2.9)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str], dict[str, float], set[str]]:
    """(config, behaviours, pidfile delays, forging tasks)."""
    tasks: dict[str, Any] = {}
    behaviours: dict[str, str] = {}
    delays: dict[str, float] = {}
    forging: set[str] = set()
    for index in range(draw(st.integers(1, 4))):
        name = f"t{index}"
        control = draw(st.sampled_from(("nowait", "nowait", "adopt", "wait")))
        task: dict[str, Any] = {
            "commands": {"start": (f"/usr/sbin/{name}d",)},
            "control": control,
            "count": draw(st.integers(1, 2)),
        }
        if control == "wait":
            behaviours[name] = draw(st.sampled_from((TERM, IGNORE_TERM)))
        else:
            behaviours[name] = DAEMONIZE
            task["pidfile"] = f"/run/{name}-{{Task_instance}}.pid"
            delays[name] = draw(st.sampled_from(DELAYS))
            if draw(st.integers(0, 3)) == 0:
                forging.add(name)
                task["user"] = "nobody"
            elif control == "nowait" and draw(st.booleans()):
                # A kill before its pidfile is read leaves the worker in a
                # slot with no known process: the sweep finds it.
                behaviours[name] = DAEMON_WITH_WORKER
        tasks[name] = task
    config = {"tasks": tasks, "settings": {"pidfile_timeout": PIDFILE_TIMEOUT}}
    return cast(dict[str, Any], freeze(config)), behaviours, delays, forging


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from((0.01, 0.1, 0.5, 1.0, 2.0, 7.0))),
        st.tuples(st.just("kill"), st.integers(0, 20)),
        st.tuples(st.just("off"), st.integers(0, 3)),
        st.tuples(st.just("on"), st.integers(0, 3)),
    ),
    max_size=12,
)


def run(world: Any, actions: list[tuple[str, Any]], last: float) -> Simulation:
    config, behaviours, delays, forging = world
    sim = Simulation(behaviours, pidfile_delays=delays, forging=forging)
    # A stranger exists from the start: root's sshd, say.
    sim.add_stranger()
    sim.advance(1.0)
    sim.boot(config)
    names = sorted(config["tasks"])
    request = 0
    for kind, value in actions:
        if kind == "advance":
            sim.advance(value)
        elif kind == "kill":
            ours = [p for p in sim.alive() if p.pid not in sim.strangers]
            if ours:
                sim.kill(ours[value % len(ours)].pid)
        else:
            request += 1
            name = names[value % len(names)]
            control = "off" if kind == "off" else config["tasks"][name]["control"]
            sim.control(request, "control", {name: control})
    sim.advance(last)
    sim.request_stop()
    sim.settle(max_time=600.0)
    return sim


def signals_to_strangers(sim: Simulation) -> list[str]:
    return [
        f"t={at:g}: {effect}"
        for at, effect in sim.effects(fx.Signal)
        if isinstance(effect, fx.Signal) and effect.pid in sim.strangers
    ]


@given(worlds(), ACTIONS, st.sampled_from((0.0, 0.01, 0.2, 0.5, 1.5, 2.95)))
def test_after_shutdown_no_process_of_any_slot_is_alive(
    world: Any, actions: list[tuple[str, Any]], last: float
) -> None:
    sim = run(world, actions, last)
    note("\n".join(f"{at:g} {log.level} {log.message}" for at, log in sim.logs))
    assert sim.finished is not None, "taskforce did not exit"
    assert not sim.violations, [str(v) for v in sim.violations]
    controls = {name: task["control"] for name, task in world[0]["tasks"].items()}
    left: dict[tuple[str, int], list[int]] = {}
    for proc in sim.alive():
        if proc.pid in sim.strangers:
            continue
        assert controls[proc.task] == "adopt", f"{proc.task}[{proc.instance}] pid {proc.pid}"
        left.setdefault((proc.task, proc.instance), []).append(proc.pid)
    for (name, instance), pids in sorted(left.items()):
        assert pids == [sim.pidfiles[f"/run/{name}-{instance}.pid"]], (name, instance, pids)
    stopped_at = [at for at, log in sim.logs if log.message == "every task has stopped"]
    assert len(stopped_at) == 1
    assert replay(sim.log) is None


@given(worlds(), ACTIONS, st.sampled_from((0.0, 0.5, 2.95)))
def test_no_signal_is_ever_sent_to_a_pid_outside_the_slots(
    world: Any, actions: list[tuple[str, Any]], last: float
) -> None:
    sim = run(world, actions, last)
    assert not signals_to_strangers(sim)
    assert all(sim.processes[pid].alive for pid in sim.strangers)
    refused = [m for m in sim.messages("warning") if "refused: pidfile" in m]
    forged = [
        event
        for event, _ in sim.log
        if isinstance(event, ev.PidfileRead) and event.pid in sim.strangers
    ]
    assert bool(refused) == bool(forged)


def test_the_simulator_forges_a_pidfile_that_names_a_stranger() -> None:
    """The fact the property above leans on, shown once."""
    config = freeze(
        {
            "tasks": {
                "liar": {
                    "commands": {"start": ("/usr/sbin/liard",)},
                    "control": "nowait",
                    "user": "nobody",
                    "pidfile": "/run/liar.pid",
                }
            }
        }
    )
    sim = Simulation({"liar": DAEMONIZE}, forging={"liar"})
    sim.boot(config)
    (stranger,) = sim.strangers
    assert sim.pidfiles["/run/liar.pid"] == stranger
    assert sim.pidfile_owners["/run/liar.pid"] != 0
    reads = [e for e, _ in sim.log if isinstance(e, ev.PidfileRead)]
    assert reads and reads[0].pid == stranger and not reads[0].in_slot
    assert reads[0].writable_by_non_root


@st.composite
def notify_worlds(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """(config, pidfile delays, ready delays) of ``ready: notify`` daemons,
    which often say READY=1 before their pidfile names them."""
    tasks: dict[str, Any] = {}
    delays: dict[str, float] = {}
    ready: dict[str, float] = {}
    for index in range(draw(st.integers(1, 3))):
        name = f"n{index}"
        tasks[name] = {
            "commands": {"start": (f"/usr/sbin/{name}d",)},
            "control": draw(st.sampled_from(("nowait", "adopt"))),
            "count": draw(st.integers(1, 2)),
            "pidfile": f"/run/{name}-{{Task_instance}}.pid",
            "ready": "notify",
        }
        delays[name] = draw(st.sampled_from(DELAYS))
        ready[name] = draw(st.sampled_from((0.0, 0.05, 0.5, 2.0)))
    config = {"tasks": tasks, "settings": {"pidfile_timeout": PIDFILE_TIMEOUT}}
    return cast(dict[str, Any], freeze(config)), delays, ready


def said_ready_but_not_ready(sim: Simulation) -> list[str]:
    """Slots whose daemon is known and said READY=1, yet are not ready."""
    said = {
        event.pid
        for event, _ in sim.log
        if isinstance(event, ev.Notified) and "READY=1" in event.message.split("\n")
    }
    return [
        f"{slot.task}[{slot.instance}] pid {slot.pid}: {slot.state.value}"
        for task in sim.core.tasks.values()
        for slot in task.slots
        if slot.phase == "daemon" and slot.state.value == "running" and slot.pid in said
    ]


@given(
    notify_worlds(),
    st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.sampled_from((0.01, 0.1, 0.5, 1.0, 2.0, 7.0))),
            st.tuples(st.just("kill"), st.integers(0, 20)),
        ),
        max_size=10,
    ),
)
def test_a_daemon_that_said_ready_is_ready_once_its_pidfile_names_it(
    world: Any, actions: list[tuple[str, Any]]
) -> None:
    """READY=1 is said once, and may come before the pidfile names the
    daemon: whenever a slot's daemon is known and has said it, the slot is
    ready (it is never left ``running`` until ``ready_timeout``)."""
    config, delays, ready = world
    sim = Simulation(dict.fromkeys(config["tasks"], DAEMONIZE), pidfile_delays=delays)
    sim.ready_delays.update(ready)
    sim.boot(config)
    assert not said_ready_but_not_ready(sim)
    for kind, value in actions:
        if kind == "advance":
            sim.advance(value)
        else:
            ours = sim.alive()
            if ours:
                sim.kill(ours[value % len(ours)].pid)
        assert not said_ready_but_not_ready(sim), kind
    sim.request_stop()
    sim.settle(max_time=600.0)
    assert sim.finished is not None and not sim.violations
    assert replay(sim.log) is None
