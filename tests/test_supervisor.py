"""Example-based tests of the core's behaviour, through ``taskforce.simulator``.

Each test boots a small config in a simulated world, does to it what the
world would (time passes, a process dies, a file changes, a new config
arrives) and checks the effects the core asked for: what it spawned and
signalled, when, and what it logged.  No real process, clock or file is
involved, so every test is exact about time and runs in milliseconds.

The clock starts at 100.0 (a real monotonic clock is never 0; see
``test_a_process_started_at_time_zero_has_a_run_time``).

Some tests keep, in their docstring, the minimal event sequence of a core
bug they once caught.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, cast

import pytest

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import decode, freeze
from taskforce.core.model import PER_PROCESS_KEYS
from taskforce.core.supervisor import Supervisor
from taskforce.simulator import (
    DAEMONIZE,
    HANG,
    IGNORE_TERM,
    NOBODY,
    STUBBORN_WRAPPER,
    WRAPPER,
    Simulation,
    replay,
)

T0 = 100.0


def task(*argv: str, **settings: Any) -> dict[str, Any]:
    return {"commands": {"start": argv or ("/usr/bin/prog",)}, **settings}


def config(**tasks: dict[str, Any]) -> dict[str, Any]:
    return cast(
        dict[str, Any],
        freeze(
            {
                "tasks": tasks,
                "settings": {},
                "defines": {},
                "role_defines": {},
                "defaults": {},
                "role_defaults": {},
            }
        ),
    )


def boot(
    cfg: dict[str, Any],
    behaviours: dict[str, str] | None = None,
    roles: tuple[str, ...] | None = None,
    failing: tuple[str, ...] = (),
    start: float = T0,
) -> Simulation:
    sim = Simulation(behaviours, failing, start=start)
    _MADE.append(sim)
    sim.boot(cfg, roles=roles)
    return sim


def spawn_times(sim: Simulation, name: str) -> list[float]:
    return [at for at, _ in sim.spawns(name)]


def pid_of(sim: Simulation, name: str, instance: int = 0) -> int:
    return sim.running()[(name, instance)]


def next_timer(sim: Simulation) -> None:
    """Advance exactly to the armed timer."""
    assert sim.timer is not None, "no timer armed"
    sim.advance(sim.timer - sim.now)


_MADE: list[Simulation] = []


@pytest.fixture(autouse=True)
def _every_run_replays() -> Any:
    """Whatever a test did, its recorded run replays to the same effects."""
    _MADE.clear()
    yield
    for sim in _MADE:
        assert replay(sim.log) is None


def assert_contract(sim: Simulation) -> None:
    assert not sim.violations, [str(v) for v in sim.violations]


# ------------------------------------------------------- restart and backoff


def test_a_stable_process_is_restarted_at_once() -> None:
    sim = boot(config(web=task("/usr/bin/web")))
    sim.advance(5.0)
    sim.kill(pid_of(sim, "web"))
    assert spawn_times(sim, "web") == [T0, T0 + 5.0]
    assert ("web", 0) in sim.running()
    assert_contract(sim)


NO_LIMIT = {"start_limit": {"burst": 0}}  # (backoff alone, without the start limit)


def test_a_fast_failer_is_restarted_with_doubling_backoff() -> None:
    sim = boot(freeze({**config(web=task("/usr/bin/web")), "settings": NO_LIMIT}))
    for _ in range(5):
        sim.kill(pid_of(sim, "web"))  # dies the moment it starts
        next_timer(sim)
    times = spawn_times(sim, "web")
    gaps = [round(b - a, 6) for a, b in pairwise(times)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert_contract(sim)


def test_backoff_is_capped() -> None:
    cfg = freeze({**config(web=task("/usr/bin/web")), "settings": {"backoff_max": 3.0, **NO_LIMIT}})
    sim = boot(cfg)
    for _ in range(5):
        sim.exit(pid_of(sim, "web"), 1)
        next_timer(sim)
    times = spawn_times(sim, "web")
    assert [round(b - a, 6) for a, b in pairwise(times)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_resets_after_a_stable_run() -> None:
    sim = boot(config(web=task("/usr/bin/web")))
    sim.exit(pid_of(sim, "web"), 1)
    next_timer(sim)  # +0.5
    sim.exit(pid_of(sim, "web"), 1)
    next_timer(sim)  # +1.0
    sim.advance(3.0)  # now it runs stably
    sim.exit(pid_of(sim, "web"), 1)
    restarted = sim.now
    assert spawn_times(sim, "web")[-1] == restarted  # at once
    sim.exit(pid_of(sim, "web"), 1)  # and fails fast again: from the start
    next_timer(sim)
    assert spawn_times(sim, "web")[-1] == pytest.approx(restarted + 0.5)
    assert any("backoff reset" in m for m in sim.messages(task="web"))


def test_a_crash_loop_is_warned_about_once() -> None:
    sim = boot(freeze({**config(web=task("/usr/bin/web")), "settings": NO_LIMIT}))
    for _ in range(8):
        sim.exit(pid_of(sim, "web"), 1)
        next_timer(sim)
    warnings = sim.messages("warning", task="web")
    assert len(warnings) == 1, warnings
    assert "backoff" in warnings[0]
    assert len(spawn_times(sim, "web")) == 9


def test_a_spawn_failure_backs_off_too() -> None:
    sim = boot(config(web=task("/opt/missing/web")), failing=("/opt/missing/web",))
    sim.advance(0.5)
    sim.advance(1.0)
    assert spawn_times(sim, "web") == [T0, T0 + 0.5, T0 + 1.5]
    assert sim.running() == {}


# --------------------------------------------------------- once and requires


def test_once_runs_once_and_its_dependent_waits_for_it_to_finish() -> None:
    sim = boot(
        config(
            migrate=task("/usr/bin/migrate", control="once"),
            app=task("/usr/bin/app", requires=("migrate",)),
        )
    )
    assert [s.task for _, s in sim.spawns()] == ["migrate"]
    assert any("migrate" in m for m in sim.messages(task="app")), "app says what it waits on"
    sim.advance(3.0)
    assert spawn_times(sim, "app") == []
    sim.exit(pid_of(sim, "migrate"), 0)
    assert spawn_times(sim, "app") == [T0 + 3.0]
    sim.advance(120.0)
    assert spawn_times(sim, "migrate") == [T0]
    assert set(sim.running()) == {("app", 0)}


def test_requires_waits_for_the_requirement_and_its_start_delay() -> None:
    sim = boot(
        config(
            db=task("/usr/bin/db", start_delay=2.0),
            app=task("/usr/bin/app", requires=("db",)),
            web=task("/usr/bin/web", requires=("app",)),
        )
    )
    assert spawn_times(sim, "db") == [T0]
    sim.advance(1.9)
    assert spawn_times(sim, "app") == []
    sim.advance(0.1)
    assert spawn_times(sim, "app") == [T0 + 2.0]
    assert spawn_times(sim, "web") == [T0 + 2.0]
    order = [s.task for _, s in sim.spawns()]
    assert order == ["db", "app", "web"]


def test_a_requirement_restarting_does_not_stop_its_dependents() -> None:
    sim = boot(config(db=task("/usr/bin/db"), app=task("/usr/bin/app", requires=("db",))))
    app = pid_of(sim, "app")
    sim.advance(5.0)
    sim.kill(pid_of(sim, "db"))
    assert pid_of(sim, "app") == app
    assert sim.signals("app") == []


# ----------------------------------------------------------------- time_limit


def test_time_limit_restarts_a_wait_task() -> None:
    sim = boot(config(job=task("/usr/bin/job", time_limit=10.0)))
    sim.advance(25.0)
    assert [(at, s.signal) for at, s in sim.signals("job")] == [
        (T0 + 10.0, "SIGTERM"),
        (T0 + 20.0, "SIGTERM"),
    ]
    assert spawn_times(sim, "job") == [T0, T0 + 10.0, T0 + 20.0]
    assert any("time_limit" in m for m in sim.messages(task="job"))


def test_time_limit_ends_a_once_task_for_good() -> None:
    sim = boot(
        config(
            scan=task("/usr/bin/scan", control="once", time_limit=10.0),
            report=task("/usr/bin/report", requires=("scan",)),
        )
    )
    sim.advance(60.0)
    assert [(at, s.signal) for at, s in sim.signals("scan")] == [(T0 + 10.0, "SIGTERM")]
    assert spawn_times(sim, "scan") == [T0]
    assert spawn_times(sim, "report") == [T0 + 10.0]  # finished counts, however it ended


# --------------------------------------------------------------------- onexit


def test_onexit_runs_a_once_task_again() -> None:
    sim = boot(
        config(
            notify=task("/usr/bin/notify", control="once"),
            web=task("/usr/bin/web", onexit=({"type": "start", "task": "notify"},)),
        )
    )
    sim.exit(pid_of(sim, "notify"), 0)
    assert spawn_times(sim, "notify") == [T0]
    sim.advance(5.0)
    sim.kill(pid_of(sim, "web"))
    assert spawn_times(sim, "notify") == [T0, T0 + 5.0]
    assert spawn_times(sim, "web") == [T0, T0 + 5.0]
    assert any("onexit" in m for m in sim.messages(task="notify"))


# ---------------------------------------------------------------------- count


def test_count_starts_one_process_per_instance_with_its_own_argv() -> None:
    sim = boot(config(worker=task("/usr/bin/worker", "--id", "{Task_instance}", count=3)))
    spawns = [s for _, s in sim.spawns("worker")]
    assert [s.instance for s in spawns] == [0, 1, 2]
    assert [s.argv for s in spawns] == [("/usr/bin/worker", "--id", str(i)) for i in range(3)]
    assert [s.env["Task_instance"] for s in spawns] == ["0", "1", "2"]
    assert len(set(sim.running().values())) == 3


def test_lowering_count_stops_only_the_extra_slots() -> None:
    cfg = config(worker=task("/usr/bin/worker", "{Task_instance}", count=3))
    sim = boot(cfg)
    before = sim.running()
    sim.advance(5.0)
    sim.reload(config(worker=task("/usr/bin/worker", "{Task_instance}", count=1)))
    assert [s.instance for _, s in sim.signals("worker")] == [1, 2]
    assert sim.running() == {("worker", 0): before[("worker", 0)]}


# --------------------------------------------------------------------- stopping


def test_stop_escalates_to_sigkill_after_the_stop_timeout() -> None:
    sim = boot(config(stubborn=task("/usr/bin/stubborn")), behaviours={"stubborn": IGNORE_TERM})
    sim.advance(5.0)
    sim.request_stop()
    assert sim.finished is None
    sim.advance(4.9)
    assert sim.finished is None
    sim.advance(0.1)
    assert [(at, s.signal) for at, s in sim.signals("stubborn")] == [
        (T0 + 5.0, "SIGTERM"),
        (T0 + 10.0, "SIGKILL"),
    ]
    assert sim.finished == fx.Exit(0, reset=False)
    assert sim.groups() == {}


def test_a_wrapper_leaving_a_grandchild_is_not_replaced_until_its_group_is_empty() -> None:
    sim = boot(config(svc=task("/bin/sh", "-c", "svcd")), behaviours={"svc": STUBBORN_WRAPPER})
    sim.advance(5.0)
    leader = pid_of(sim, "svc")
    sim.exit(leader, 1)  # the shell dies; its grandchild lingers, ignoring SIGTERM
    assert sim.running() == {}
    assert sim.groups() == {leader: ("svc", 0)}
    assert [(s.signal, s.group) for _, s in sim.signals("svc")] == [("SIGTERM", True)]
    sim.advance(4.9)
    assert spawn_times(sim, "svc") == [T0]
    sim.advance(0.1)
    assert [(s.signal, s.group) for _, s in sim.signals("svc")][-1] == ("SIGKILL", True)
    emptied = [i for i, (e, _) in enumerate(sim.log) if isinstance(e, ev.GroupEmptied)]
    respawned = [i for i, (_, f) in enumerate(sim.log) if any(isinstance(x, fx.Spawn) for x in f)]
    assert emptied and respawned[-1] >= emptied[0]
    assert spawn_times(sim, "svc") == [T0, T0 + 10.0]
    assert_contract(sim)


def test_a_wrapper_is_stopped_with_its_whole_group() -> None:
    sim = boot(config(svc=task("/bin/sh", "-c", "svcd")), behaviours={"svc": WRAPPER})
    sim.advance(2.0)
    sim.request_stop()
    assert sim.finished is not None
    assert not [p for p in sim.processes.values() if p.alive]


def test_shutdown_stops_dependents_before_their_requirements_then_exits() -> None:
    sim = boot(
        config(
            db=task("/usr/bin/db"),
            app=task("/usr/bin/app", requires=("db",)),
            web=task("/usr/bin/web", requires=("app",)),
            cron=task("/usr/bin/cron"),
        ),
        behaviours={"app": IGNORE_TERM},
    )
    sim.advance(5.0)
    sim.request_stop()
    first = {(s.task, s.signal) for at, s in sim.signals() if at == T0 + 5.0}
    assert first == {("web", "SIGTERM"), ("app", "SIGTERM"), ("cron", "SIGTERM")}
    assert ("db", 0) in sim.running(), "db waits while app (which needs it) still runs"
    sim.settle()
    order = [(at, s.task, s.signal) for at, s in sim.signals()]
    assert order[-2:] == [(T0 + 10.0, "app", "SIGKILL"), (T0 + 10.0, "db", "SIGTERM")]
    assert sim.finished == fx.Exit(0, reset=False)
    assert any(isinstance(f, fx.Exit) for f in sim.log[-1][1])
    assert sim.groups() == {}


def test_reset_stops_everything_and_exits_for_reexec() -> None:
    sim = boot(config(web=task("/usr/bin/web")))
    sim.request_stop(reset=True)
    assert sim.finished == fx.Exit(0, reset=True)


def test_resets_asked_for_during_a_reset_join_it() -> None:
    sim = boot(config(web=task("/usr/bin/web")), behaviours={"web": IGNORE_TERM})
    sim.request_stop(reset=True, reason="got SIGHUP")
    sim.request_stop(reset=True, reason="got SIGHUP")
    sim.request_stop(reset=True, reason="taskforce's own code changed")
    started = [m for m in sim.messages() if m.startswith("reset: stopping every task")]
    joined = [m for m in sim.messages() if m.startswith("a reset is already under way")]
    assert len(started) == 1
    assert joined == [
        "a reset is already under way (got SIGHUP)",
        "a reset is already under way (taskforce's own code changed)",
    ]
    assert [s.signal for _, s in sim.signals("web")] == ["SIGTERM"], "stopped once"
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=True)


def test_a_reset_while_the_files_are_broken_is_refused_and_stops_nothing() -> None:
    """The shell reports what loading the files found; the core refuses, in
    the words (and with the counter) the shell's own refusal used."""
    sim = boot(config(web=task("/usr/bin/web")))
    pid = sim.running()[("web", 0)]
    assert not sim.request_reset("got SIGHUP", errors=("/etc/tf.conf: line 3: bad",))
    assert not sim.request_reset("-R", errors=("tasks.a: no start", "tasks.b: no start"))
    assert sim.messages("error") == [
        "reset: reset refused, /etc/tf.conf: line 3: bad; nothing was stopped; nothing was changed",
        "reset: reset refused, tasks.a: no start; nothing was stopped",
        "reset: reset refused, tasks.b: no start; nothing was stopped",
        "reset: 2 errors; nothing was changed",
    ]
    assert sim.core.counters["reload_errors"] == 2
    assert sim.core.shutdown is None and sim.signals() == []
    assert sim.running() == {("web", 0): pid}


def test_a_reset_while_the_roles_file_is_missing_is_refused() -> None:
    sim = boot(config(web=task("/usr/bin/web")), roles=("a",))
    sim.delete_roles("/etc/roles")
    assert not sim.request_reset("got SIGHUP")
    assert sim.messages("error")[-1] == (
        "reset: reset refused, roles file /etc/roles not found; nothing was stopped; "
        "nothing was changed"
    )
    sim.reload(roles=("a",))  # the file is back
    assert sim.request_reset("got SIGHUP")
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=True)


def test_a_reset_asked_for_during_one_joins_it_however_broken_the_files() -> None:
    sim = boot(config(web=task("/usr/bin/web")), behaviours={"web": IGNORE_TERM})
    assert sim.request_reset("got SIGHUP")
    assert sim.request_reset("-R", errors=("/etc/tf.conf: line 3: bad",))
    assert sim.messages()[-1] == "a reset is already under way (-R)"
    assert not sim.messages("error")
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=True)


def test_a_reset_asked_for_is_checked_once_and_a_storm_during_it_reads_no_file() -> None:
    """A signal or request asks without facts: the core asks the shell to read
    the files (CheckReset) only when no reset is under way yet."""
    sim = boot(config(web=task("/usr/bin/web")), behaviours={"web": IGNORE_TERM})
    assert sim.feed(ev.ResetAsked(sim.now, "got SIGHUP")) == (fx.CheckReset("got SIGHUP"),)
    sim.feed(ev.ResetRequested(sim.now, reason="got SIGHUP"))
    assert sim.core.shutdown is not None
    for _ in range(3):
        answer = sim.feed(ev.ResetAsked(sim.now, "got SIGHUP"))
        assert not any(isinstance(e, fx.CheckReset) for e in answer)
    assert sim.messages()[-1] == "a reset is already under way (got SIGHUP)"
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=True)


def test_an_edited_config_or_roles_file_is_read_again_and_new_own_code_resets() -> None:
    """Which of taskforce's own inputs means a reload and which a reset is
    the core's call; the shell only reports the change and does the reading."""
    sim = boot(config(web=task("/usr/bin/web")), behaviours={"web": IGNORE_TERM})
    answer = sim.feed(ev.FileChanged(sim.now, ev.CONFIG_KEY, "/etc/tf.conf"))
    assert answer == (fx.LoadInputs("config"),)
    assert sim.feed(ev.FileChanged(sim.now, ev.ROLES_KEY, "/etc/roles")) == (
        fx.LoadInputs("roles"),
    )
    assert sim.running().keys() == {("web", 0)}, "the same files again change nothing"
    answer = sim.feed(ev.FileChanged(sim.now, ev.CODE_KEY, "/opt/taskforce/daemon.py"))
    assert answer == (fx.CheckReset("taskforce's own code changed (/opt/taskforce/daemon.py)"),)
    assert (
        "reset: stopping every task, then restarting "
        "(taskforce's own code changed (/opt/taskforce/daemon.py))"
    ) in sim.messages()
    # The rest of an update joins the reset without the files being read.
    answer = sim.feed(ev.FileChanged(sim.now, ev.CODE_KEY, "/opt/taskforce/tools.py"))
    assert not any(isinstance(e, fx.CheckReset) for e in answer)
    assert sim.messages()[-1] == (
        "a reset is already under way (taskforce's own code changed (/opt/taskforce/tools.py))"
    )
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=True)


def test_new_own_code_while_the_roles_file_is_missing_resets_nothing() -> None:
    sim = boot(config(web=task("/usr/bin/web")), roles=("a",))
    sim.delete_roles("/etc/roles")
    sim.feed(ev.FileChanged(sim.now, ev.CODE_KEY, "/opt/taskforce/daemon.py"))
    assert sim.core.shutdown is None and sim.signals() == []
    assert "reset refused, roles file /etc/roles not found" in sim.messages("error")[-1]


def test_a_task_named_like_an_input_key_keeps_its_own_file_events() -> None:
    """Task watch keys hold a "#": a task called "@config" is not the config."""
    sim = boot(
        config(
            **{
                "@config": task(
                    "/usr/bin/web",
                    events=({"type": "file_change", "path": ("/etc/web",), "signal": "SIGHUP"},),
                )
            }
        )
    )
    assert "@config#0" in sim.watches
    sim.touch("/etc/web")
    assert [s.signal for _, s in sim.signals("@config")] == ["SIGHUP"]


def test_a_stop_during_a_reset_makes_taskforce_exit() -> None:
    sim = boot(config(web=task("/usr/bin/web")), behaviours={"web": IGNORE_TERM})
    sim.request_stop(reset=True, reason="got SIGHUP")
    sim.request_stop(reason="got SIGTERM")
    sim.request_stop(reset=True, reason="got SIGHUP")
    sim.settle()
    assert sim.finished == fx.Exit(0, reset=False)


# ----------------------------------------------------------------------- reload


def test_a_reload_restarts_only_the_task_whose_argv_changed() -> None:
    cfg = dict(
        a=task("/usr/bin/a"),
        b=task("/usr/bin/b", "--v1", requires=("a",)),
        c=task("/usr/bin/c", requires=("b",)),
    )
    sim = boot(config(**cfg))
    sim.advance(10.0)
    before = sim.running()
    sim.reload(config(**{**cfg, "b": task("/usr/bin/b", "--v2", requires=("a",))}))
    after = sim.running()
    assert {s.task for _, s in sim.signals()} == {"b"}
    assert after[("a", 0)] == before[("a", 0)]
    assert after[("c", 0)] == before[("c", 0)]
    assert after[("b", 0)] != before[("b", 0)]
    assert sim.spawns("b")[-1][1].argv == ("/usr/bin/b", "--v2")
    assert any("argv" in m for m in sim.messages(task="b"))


def test_a_reload_that_changes_nothing_touches_nothing() -> None:
    cfg = config(a=task("/usr/bin/a"), b=task("/usr/bin/b", requires=("a",)))
    sim = boot(cfg)
    mark = len(sim.log)
    sim.reload(cfg)
    assert [f for _, fs in sim.log[mark:] for f in fs if not isinstance(f, fx.Log)] == []


def test_a_rejected_config_changes_nothing() -> None:
    sim = boot(config(a=task("/usr/bin/a")))
    before = sim.running()
    sim.reject("tasks.a.count: expected a number")
    sim.reload(config(a=task("/usr/bin/a"), b=task("/usr/bin/b", requires=("nope",))))
    assert sim.running() == before
    assert len(sim.spawns()) == 1
    assert len(sim.messages("error")) == 2


def test_a_requirement_that_is_off_makes_the_dependent_wait_and_say_so() -> None:
    sim = boot(
        config(db=task("/usr/bin/db", control="off"), app=task("/usr/bin/app", requires=("db",)))
    )
    assert sim.spawns() == []
    waiting = [m for m in sim.messages(task="app") if "waiting" in m]
    assert waiting and "db" in waiting[-1] and "off" in waiting[-1]
    sim.reload(config(db=task("/usr/bin/db"), app=task("/usr/bin/app", requires=("db",))))
    assert [s.task for _, s in sim.spawns()] == ["db", "app"]


def test_a_requirement_out_of_scope_makes_the_dependent_wait_and_say_so() -> None:
    cfg = config(
        db=task("/usr/bin/db", roles=("dbhost",)),
        app=task("/usr/bin/app", requires=("db",)),
    )
    sim = boot(cfg, roles=("web",))
    assert sim.spawns() == []
    waiting = [m for m in sim.messages(task="app") if "waiting" in m]
    assert waiting and "db" in waiting[-1] and "out of scope" in waiting[-1]
    sim.reload(roles=("web", "dbhost"))
    assert [s.task for _, s in sim.spawns()] == ["db", "app"]
    sim.advance(5.0)
    sim.reload(roles=("web",))
    assert {s.task for _, s in sim.signals()} == {"db"}, "only db leaves; app keeps running"


def test_a_bare_role_edit_restarts_nothing_that_stays_in_scope() -> None:
    cfg = config(
        both=task("/usr/bin/both", roles=("frontend", "backend")),
        front=task("/usr/bin/front", roles=("frontend",)),
        back=task("/usr/bin/back", roles=("backend",)),
        plain=task("/usr/bin/plain"),
    )
    sim = boot(cfg, roles=("frontend",))
    kept = {name: pid_of(sim, name) for name in ("both", "plain")}
    sim.advance(5.0)
    sim.reload(roles=("backend", "extra"))
    assert [s.task for _, s in sim.signals()] == ["front"]
    assert [s.task for _, s in sim.spawns()][-1] == "back"
    assert {name: pid_of(sim, name) for name in kept} == kept
    # A bare role is present for conditionals but in no environment.
    assert not any(k.startswith("Task_role_") for _, s in sim.spawns() for k in s.env)


def test_a_role_value_change_restarts_exactly_the_tasks_whose_environment_changes() -> None:
    cfg = config(
        plain=task("/usr/bin/plain"),
        webby=task("/usr/bin/webby", roles=("web",)),
        pinned=task("/usr/bin/pinned", defines={"Task_role_dc": "here"}),
    )
    sim = Simulation(start=T0)
    _MADE.append(sim)
    sim.boot(cfg, roles=("dc", "web"), role_values={"dc": "eu-west-1"})
    assert {s.task: s.env["Task_role_dc"] for _, s in sim.spawns()} == {
        "pinned": "here",
        "plain": "eu-west-1",
        "webby": "eu-west-1",
    }
    sim.advance(5.0)
    sim.reload(cfg)  # the roles file as it is: its values stay too
    assert sim.signals() == []
    sim.reload(roles=("dc", "web"), role_values={"dc": "us-east-1"})
    assert sorted(s.task for _, s in sim.signals()) == ["plain", "webby"]
    why = "environment (Task_role_dc)"
    restarted = {m.split("[")[0] for m in sim.messages() if "(pid" in m and why in m}
    assert restarted == {"plain", "webby"}, sim.messages()


def test_a_process_has_the_facts_of_its_own_start_outside_its_spec() -> None:
    sim = boot(config(a=task("/usr/bin/a", count=2), b=task("/usr/bin/b", user="www")))
    spawned = {(s.task, s.instance): s for _, s in sim.spawns()}
    assert not any(key in s.env for s in spawned.values() for key in PER_PROCESS_KEYS)
    sim.advance(2.5)
    sim.kill(pid_of(sim, "a", 1))
    envs = {(p.task, p.instance): p.env for p in sim.processes.values() if p.alive and p.leader}
    assert envs[("a", 0)]["Task_started"] == f"{T0:.6f}"
    assert envs[("a", 1)]["Task_started"] == f"{T0 + 2.5:.6f}"  # its replacement's
    assert envs[("a", 0)]["Task_uid"] == envs[("a", 0)]["Task_gid"] == "0"
    assert envs[("b", 0)]["Task_uid"] == str(NOBODY)
    assert envs[("a", 0)]["Task_pid"] == str(pid_of(sim, "a", 0))
    # The replacement's spawn is the first one's: the facts are not the spec.
    first, second = [s for _, s in sim.spawns("a") if s.instance == 1]
    assert first.env == second.env and second.generation > first.generation


# ----------------------------------------------------------------- file events


def test_a_file_change_with_command_stop_restarts_the_task() -> None:
    sim = boot(
        config(
            ntpd=task(
                "/usr/sbin/ntpd",
                events=({"type": "file_change", "path": ("/etc/ntp.conf",), "command": "stop"},),
            )
        )
    )
    assert sim.watches["ntpd#0"].paths == ("/etc/ntp.conf",)
    sim.advance(10.0)
    old = pid_of(sim, "ntpd")
    sim.touch("/etc/motd")
    assert sim.signals() == []
    sim.touch("/etc/ntp.conf")
    assert [(s.pid, s.signal, s.group) for _, s in sim.signals()] == [(old, "SIGTERM", True)]
    assert spawn_times(sim, "ntpd") == [T0, T0 + 10.0]
    assert pid_of(sim, "ntpd") != old


def test_a_file_change_with_signal_hup_signals_only_the_leader() -> None:
    sim = boot(
        config(
            web=task(
                "/bin/sh",
                "-c",
                "httpd",
                events=({"type": "file_change", "path": ("/etc/httpd.conf",), "signal": "SIGHUP"},),
            )
        ),
        behaviours={"web": WRAPPER},
    )
    leader = pid_of(sim, "web")
    sim.advance(3.0)
    sim.touch("/etc/httpd.conf")
    assert [(s.pid, s.signal, s.group) for _, s in sim.signals()] == [(leader, "SIGHUP", False)]
    members = [p for p in sim.processes.values() if p.pgid == leader]
    assert [[d.signal for d in p.received] for p in members] == [["SIGHUP"], []]
    assert pid_of(sim, "web") == leader
    assert spawn_times(sim, "web") == [T0]


# -------------------------------------------------------------- the simulator


def test_the_simulator_answers_spawn_first_and_allocates_pids_in_order() -> None:
    sim = boot(config(a=task("/usr/bin/a"), b=task("/usr/bin/b", count=2)))
    kinds = [type(e).__name__ for e, _ in sim.log]
    assert kinds == ["Booted", "ConfigLoaded", "ProcessStarted", "ProcessStarted", "ProcessStarted"]
    assert sorted(sim.running().values()) == [1000, 1001, 1002]


def test_the_simulator_plays_a_daemonizing_launcher() -> None:
    sim = boot(
        config(ntpd=task("/usr/sbin/ntpd", control="nowait", pidfile="/run/ntpd.pid")),
        behaviours={"ntpd": DAEMONIZE},
    )
    launcher = sim.spawns("ntpd")[0][1]
    daemon = sim.pidfiles["/run/ntpd.pid"]
    assert sim.running() == {("ntpd", 0): daemon}
    assert not sim.processes[daemon].child
    assert sim.core.live_pids() == sim.groups() == {daemon: ("ntpd", 0)}
    assert launcher.argv == ("/usr/sbin/ntpd",)
    sim.request_stop()
    assert sim.finished is not None and sim.groups() == {}
    assert_contract(sim)


def test_replay_finds_the_first_differing_step() -> None:
    sim = boot(config(a=task("/usr/bin/a")))
    sim.advance(3.0)
    sim.kill(pid_of(sim, "a"))
    log = list(sim.log)
    assert replay(log) is None
    event, effects = log[3]
    log[3] = (event, effects[:-1])
    divergence = replay(log)
    assert divergence is not None and divergence.step == 3


# --------------------------------------------------------------- core bugs


def test_once_task_switched_to_wait_runs_again() -> None:
    """ConfigLoaded(a: once) -> ProcessStarted(a) -> ProcessExited(a, 0)
    -> ConfigLoaded(a: wait): no Spawn, ever; the slot stays DONE."""
    sim = boot(config(a=task("/usr/bin/a", control="once")))
    sim.exit(pid_of(sim, "a"), 0)
    sim.reload(config(a=task("/usr/bin/a", control="wait")))
    sim.settle()
    assert ("a", 0) in sim.running()


def test_time_limit_during_shutdown_keeps_the_order() -> None:
    """db (time_limit 3), app requires db and ignores SIGTERM.  At +1
    StopRequested: SIGTERM app only (right).  At +3 TimerFired: SIGTERM db
    although app is still alive (wrong: dependents first)."""
    sim = boot(
        config(db=task("/usr/bin/db", time_limit=3.0), app=task("/usr/bin/app", requires=("db",))),
        behaviours={"app": IGNORE_TERM},
    )
    sim.advance(1.0)
    sim.request_stop()
    sim.settle()
    db_stop = next(at for at, s in sim.signals("db"))
    app_gone = next(at for at, s in sim.signals("app") if s.signal == "SIGKILL")
    assert db_stop >= app_gone


def test_late_exit_report_does_not_fire_stale_kill() -> None:
    """a ignores SIGTERM; a reload stops it at T (kill due T+5).  It exits at
    T+5.2 but the shell, held up, reports ProcessExited(at=T+5.2) with no
    TimerFired before it: the core emits Signal(SIGKILL, pid) for the pid it
    is being told was reaped (pid reuse hazard), and logs 'did not stop'."""
    sim = boot(config(a=task("/usr/bin/a", "v1")), behaviours={"a": IGNORE_TERM})
    sim.advance(10.0)
    sim.reload(config(a=task("/usr/bin/a", "v2")))
    old = [p for p in sim.processes.values() if p.alive][0].pid
    sim.stall(5.2)
    sim.exit(old, 0)
    assert not sim.violations, [str(v) for v in sim.violations]
    assert not any("did not stop" in m for m in sim.messages())


def test_a_process_started_at_time_zero_has_a_run_time() -> None:
    """Booted(at=0) ConfigLoaded(at=0) ProcessStarted(at=0) ProcessExited(at=10):
    logged 'after 0.00s; failing fast', restarted at 10.5 instead of 10."""
    sim = boot(config(a=task("/usr/bin/a")), start=0.0)
    sim.advance(10.0)
    sim.kill(pid_of(sim, "a"))
    assert spawn_times(sim, "a") == [0.0, 10.0]


def test_a_fast_failing_wrapper_is_backed_off() -> None:
    """svc is a shell wrapper whose grandchild ignores SIGTERM.  Its shell
    exits 1 at once, the group drains for the stop timeout (5 s), then
    GroupEmptied: the core computes 'ran 5 s', calls it stable, restarts at
    once and logs a 'restarting' warning on every round."""
    sim = boot(config(svc=task("/bin/sh", "-c", "svcd")), behaviours={"svc": STUBBORN_WRAPPER})
    for _ in range(3):
        sim.exit(pid_of(sim, "svc"), 1)
        sim.settle(max_time=30.0)
    warnings = sim.messages("warning", task="svc")
    assert len([w for w in warnings if "restarting" in w or "backoff" in w]) == 1, warnings


# ---------------------------------------------------------------- health checks


def checked(**settings: Any) -> dict[str, Any]:
    return {"commands": {"start": ("/usr/sbin/svc",), "check": ("/usr/bin/probe",)}, **settings}


def test_a_passing_health_check_runs_on_its_interval_and_restarts_nothing() -> None:
    sim = boot(config(svc=checked(check_interval=10)))
    first = pid_of(sim, "svc")
    sim.advance(35)
    runs = [at for at, command in sim.commands if command.name == "check"]
    assert runs == [T0 + 10, T0 + 20, T0 + 30]
    assert pid_of(sim, "svc") == first
    assert_contract(sim)


def test_a_failing_health_check_restarts_the_slot_with_its_reason() -> None:
    sim = boot(config(svc=checked(check_interval=10)))
    first = pid_of(sim, "svc")
    sim.command_codes[("svc", "check")] = 2
    sim.advance(10)
    second = pid_of(sim, "svc")
    assert second != first
    assert any("health check exited 2" in message for message in sim.messages())
    assert sim.core.counters["check_failures"] == 1
    assert_contract(sim)


def test_a_check_is_not_run_without_a_check_command() -> None:
    sim = boot(config(svc=task("/usr/sbin/svc", check_interval=1)))
    sim.advance(10)
    assert not sim.commands


def test_a_hung_check_is_killed_at_its_timeout_and_counts_as_a_failure() -> None:
    """Issue 13: a check that never ends used to hold the slot's checks
    for ever (no further check, no restart).  At check_timeout it is
    killed (its process group) and counted as failed."""
    sim = boot(config(svc=checked(check_interval=10, check_timeout=3)))
    first = pid_of(sim, "svc")
    sim.command_durations[("svc", "check")] = HANG
    sim.advance(10)
    assert [run.pid for run in sim.running_commands()]
    sim.advance(3)
    assert not sim.running_commands()
    (run,) = sim.runs.values()
    assert run.killed_by == "SIGKILL" and run.ended_at == T0 + 13
    assert pid_of(sim, "svc") != first
    assert any("health check timed out after 3s" in m for m in sim.messages())
    counters = sim.core.counters
    assert (counters["check_runs"], counters["check_failures"], counters["check_timeouts"]) == (
        1,
        1,
        1,
    )
    assert_contract(sim)


def test_the_default_check_timeout_is_the_check_interval() -> None:
    sim = boot(config(svc=checked(check_interval=10)))
    sim.command_durations[("svc", "check")] = HANG
    sim.advance(19.9)
    assert sim.running_commands()
    sim.advance(0.1)
    assert not sim.running_commands()
    assert sim.core.counters["check_timeouts"] == 1


def test_a_slot_restarts_only_after_check_failures_in_a_row() -> None:
    sim = boot(config(svc=checked(check_interval=10, check_failures=3)))
    first = pid_of(sim, "svc")
    sim.command_codes[("svc", "check")] = 1
    sim.advance(25)  # two failures
    assert pid_of(sim, "svc") == first
    assert any("1 of 3 failures before a restart" in m for m in sim.messages("warning"))
    sim.command_codes[("svc", "check")] = 0
    sim.advance(10)  # a pass resets the streak
    assert any("health check passed after 2 failures" in m for m in sim.messages())
    sim.command_codes[("svc", "check")] = 1
    sim.advance(20)  # two more: still not three in a row
    assert pid_of(sim, "svc") == first
    sim.advance(10)
    assert pid_of(sim, "svc") != first
    assert any("health check exited 1 (3 in a row)" in m for m in sim.messages())
    assert sim.core.tasks["svc"].check_failures == 5
    assert_contract(sim)


def test_a_running_check_is_killed_when_its_slot_stops_or_taskforce_exits() -> None:
    sim = boot(config(svc=checked(check_interval=10, check_timeout=100), other=task()))
    sim.command_durations[("svc", "check")] = HANG
    sim.advance(10)
    assert sim.running_commands()
    changed = checked(check_interval=10, check_timeout=100, defines={"V": "2"})
    sim.reload(config(svc=changed, other=task()))
    assert not sim.running_commands(), "its slot restarted: the check went with it"
    sim.advance(10)
    assert sim.running_commands()
    sim.request_stop()
    sim.settle()
    assert sim.finished is not None
    assert not sim.running_commands()
    assert all(run.killed_by == "SIGKILL" for run in sim.runs.values())
    assert_contract(sim)


def test_a_running_check_is_killed_at_shutdown() -> None:
    sim = boot(config(svc=checked(check_interval=10, check_timeout=100)))
    sim.command_durations[("svc", "check")] = HANG
    sim.advance(10)
    assert sim.running_commands()
    sim.request_stop()
    assert not sim.running_commands()
    sim.settle()
    assert sim.finished is not None


def test_a_late_answer_of_a_killed_check_is_ignored() -> None:
    """The kill and the check's own exit can cross: the exit of a run
    already judged must not be judged again."""
    sim = boot(config(svc=checked(check_interval=10, check_timeout=2, check_failures=2)))
    sim.command_durations[("svc", "check")] = HANG
    sim.advance(12)
    run = next(iter(sim.runs.values()))
    sim.core.handle(
        ev.CommandExited(at=sim.now, task="svc", name="check", pid=run.pid, exit_code=1, run=1)
    )
    assert sim.core.tasks["svc"].check_failures == 1
    assert sim.core.slot("svc", 0).check_fails == 1


# ---------------------------------------------- after a crash of taskforce


def test_a_leftover_is_stopped_before_its_slot_starts_again() -> None:
    """The crash doubled every task: the new taskforce started its own copy
    beside what the old one left.  Now the copy waits for the leftover."""
    sim = boot(config(web=task(count=2), db=task()), {"web": IGNORE_TERM})
    old = dict(sim.running())
    sim.advance(10)
    sim.crash()
    # db's leftover dies of its SIGTERM, and only then is db started again;
    # web's ignore it: nothing starts in their place while they live.
    assert sim.processes[old[("db", 0)]].signal == "SIGTERM"
    assert [at for at, _ in sim.spawns("db")] == [T0 + 10]
    assert sim.running()[("web", 0)] == old[("web", 0)]
    assert sim.running()[("web", 1)] == old[("web", 1)]
    sim.advance(4.9)
    assert not sim.spawns("web")
    sim.advance(0.2)
    assert [spawn.instance for _, spawn in sim.spawns("web")] == [0, 1]
    for slot in (("web", 0), ("web", 1)):
        assert sim.processes[old[slot]].signal == "SIGKILL"
    assert len(sim.running()) == 3
    assert any("left running by an earlier taskforce" in m for m in sim.messages("warning"))
    assert_contract(sim)


def test_a_leftover_of_a_task_no_longer_configured_is_stopped() -> None:
    sim = boot(config(web=task(), old=task("/usr/bin/old")))
    gone = pid_of(sim, "old")
    sim.crash(config(web=task()))
    assert not sim.processes[gone].alive
    assert set(sim.running()) == {("web", 0)}
    assert_contract(sim)


def test_an_adopt_leftover_is_kept_and_adopted() -> None:
    cfg = config(dmn=task("/usr/sbin/dmn", control="adopt", pidfile="/run/dmn.pid"))
    sim = boot(cfg, {"dmn": DAEMONIZE})
    daemon = sim.pidfiles["/run/dmn.pid"]
    sim.crash()
    assert sim.processes[daemon].alive
    assert not sim.spawns(), "an adopted leftover is not started again"
    assert sim.core.slot("dmn", 0).pid == daemon  # type: ignore[union-attr]
    assert_contract(sim)


def test_a_shutdown_waits_for_the_leftovers() -> None:
    sim = boot(config(web=task()), {"web": IGNORE_TERM})
    sim.crash()
    sim.request_stop()
    assert sim.finished is None
    sim.advance(5)
    assert sim.finished is not None
    assert not [p for p in sim.processes.values() if p.present]
    assert_contract(sim)


def test_leftovers_survive_a_snapshot() -> None:
    from taskforce.core.snapshot import restore, snapshot

    sim = boot(config(web=task()), {"web": IGNORE_TERM})
    sim.crash()
    again = restore(snapshot(sim.core))
    assert snapshot(again) == snapshot(sim.core)
    assert again.leftovers.keys() == {("web", 0)}


def test_an_adopt_leftover_its_pidfile_does_not_name_is_stopped_first() -> None:
    cfg = config(dmn=task("/usr/sbin/dmn", control="adopt", pidfile="/run/dmn.pid"))
    sim = boot(cfg, {"dmn": DAEMONIZE})
    daemon = sim.pidfiles.pop("/run/dmn.pid")
    sim.crash()
    assert not sim.processes[daemon].alive, "a leftover no pidfile names is not kept"
    assert len(sim.spawns("dmn")) == 1
    assert sim.core.slot("dmn", 0).pid == sim.pidfiles["/run/dmn.pid"]  # type: ignore[union-attr]
    assert_contract(sim)


# ------------------------------------------------- nowait and adopt: pidfiles

NTPD_PIDFILE = "/run/ntpd.pid"


def ntpd(control: str = "nowait", **settings: Any) -> dict[str, Any]:
    return task("/usr/sbin/ntpd", control=control, pidfile=NTPD_PIDFILE, **settings)


def daemonizing(
    cfg: dict[str, Any], delay: float = 0.0, forging: tuple[str, ...] = ()
) -> Simulation:
    sim = Simulation({"ntpd": DAEMONIZE}, start=T0, pidfile_delays={"ntpd": delay}, forging=forging)
    _MADE.append(sim)
    sim.boot(cfg)
    return sim


def test_a_shutdown_while_the_pidfile_is_awaited_stops_the_daemon_it_names() -> None:
    """Issue 11, events in and effects out: the start command exited 0, the
    pidfile does not name the daemon yet, SIGTERM comes.  The core must not
    say "every task has stopped" then: it waits for the pidfile, stops the
    daemon it names, and only then exits."""
    core = Supervisor()
    core.handle(ev.Booted(at=T0, pid=1))
    effects = core.handle(ev.ConfigLoaded(at=T0, config=config(ntpd=ntpd())))
    (spawn,) = [e for e in effects if isinstance(e, fx.Spawn)]
    core.handle(ev.ProcessStarted(at=T0, task="ntpd", generation=spawn.generation, pid=500))
    effects = core.handle(ev.ProcessExited(at=T0 + 0.01, pid=500, exit_code=0))
    assert fx.ReadPidfile("ntpd", 0, spawn.generation, NTPD_PIDFILE) in effects
    core.handle(
        ev.PidfileRead(at=T0 + 0.01, task="ntpd", generation=spawn.generation, error="no pidfile")
    )
    effects = core.handle(ev.StopRequested(at=T0 + 0.05))
    assert not [e for e in effects if isinstance(e, (fx.Exit, fx.Signal))]
    messages = [e.message for e in effects if isinstance(e, fx.Log)]
    assert "every task has stopped" not in messages
    assert any("waiting for its pidfile to name its daemon, to stop it" in m for m in messages)
    effects = core.handle(ev.TimerFired(at=T0 + 0.11))
    assert fx.ReadPidfile("ntpd", 0, spawn.generation, NTPD_PIDFILE) in effects
    effects = core.handle(
        ev.PidfileRead(
            at=T0 + 0.11, task="ntpd", generation=spawn.generation, pid=600, in_slot=True
        )
    )
    assert fx.WatchProcess("ntpd", 0, 600) in effects
    assert fx.Signal("ntpd", 0, 600, "SIGTERM", group=False) in effects
    assert not [e for e in effects if isinstance(e, fx.Exit)]
    effects = core.handle(ev.ProcessExited(at=T0 + 0.2, pid=600))
    assert fx.Log("info", "every task has stopped") in effects
    assert fx.Exit(0) in effects


@pytest.mark.parametrize("while_", ["the start command runs", "the pidfile is awaited"])
def test_ready_said_before_the_daemon_is_known_makes_it_ready_once_found(while_: str) -> None:
    """A ``nowait`` daemon with ``ready: notify`` may say READY=1 before
    taskforce knows its pid: while its start command still runs, or after
    it exited and before the pidfile names the daemon.  It says it once, so
    the core keeps it: the slot is ready as soon as the daemon is found
    (not restarted at ``ready_timeout``)."""
    core = Supervisor()
    core.handle(ev.Booted(at=T0, pid=1))
    effects = core.handle(ev.ConfigLoaded(at=T0, config=config(ntpd=ntpd(ready="notify"))))
    (spawn,) = [e for e in effects if isinstance(e, fx.Spawn)]
    core.handle(ev.ProcessStarted(at=T0, task="ntpd", generation=spawn.generation, pid=500))
    ready = ev.Notified(at=T0 + 0.01, task="ntpd", pid=600, message="READY=1\nSTATUS=up")
    if while_ == "the start command runs":
        core.handle(ready)
    core.handle(ev.ProcessExited(at=T0 + 0.02, pid=500, exit_code=0))
    if while_ == "the pidfile is awaited":
        core.handle(ready)
    slot = core.slot("ntpd", 0)
    assert slot is not None and slot.state.value == "probing"
    effects = core.handle(
        ev.PidfileRead(
            at=T0 + 0.03, task="ntpd", generation=spawn.generation, pid=600, in_slot=True
        )
    )
    assert slot.state.value == "ready" and slot.pid == 600
    assert slot.status == "up"
    messages = [e.message for e in effects if isinstance(e, fx.Log)]
    assert "ntpd[0] ready after 0.00s (READY=1, sent before its pidfile was read)" in messages
    # Its next process says it again: what the last one said is not kept.
    effects = core.handle(ev.ProcessExited(at=T0 + 1, pid=600, exit_code=1))
    effects += core.handle(ev.TimerFired(at=T0 + 5))
    (again,) = [e for e in effects if isinstance(e, fx.Spawn)]
    core.handle(ev.ProcessStarted(at=T0 + 5, task="ntpd", generation=again.generation, pid=700))
    core.handle(ev.ProcessExited(at=T0 + 5, pid=700, exit_code=0))
    core.handle(
        ev.PidfileRead(at=T0 + 5, task="ntpd", generation=again.generation, pid=800, in_slot=True)
    )
    assert slot.pid == 800 and slot.state.value == "running"


def test_a_notify_daemon_in_the_simulator_is_ready_though_its_pidfile_comes_late() -> None:
    sim = daemonizing(config(ntpd=ntpd(ready="notify")), delay=1.0)
    ready = [e for e, _ in sim.log if isinstance(e, ev.Notified)]
    assert ready and ready[0].message == "READY=1", "sent before the pidfile is written"
    sim.advance(1.5)
    slot = sim.core.slot("ntpd", 0)
    assert slot is not None and slot.state.value == "ready"
    assert slot.pid == sim.pidfiles[NTPD_PIDFILE] == ready[0].pid
    sim.advance(60.0)  # past ready_timeout: not restarted
    assert len(sim.spawns("ntpd")) == 1 and slot.state.value == "ready"
    assert_contract(sim)


def test_an_adopted_notify_daemon_is_ready_and_not_restarted_at_ready_timeout() -> None:
    """A daemon running before taskforce started (kept through a reset) said
    READY=1 to the taskforce before, and will not say it again: adopted, it
    is ready, not restarted once ``ready_timeout`` passes."""
    sim = Simulation({"ntpd": DAEMONIZE}, start=T0)
    _MADE.append(sim)
    pid = sim.add_process("ntpd", 0, ("/usr/sbin/ntpd",), pidfile=NTPD_PIDFILE)
    sim.boot(config(ntpd=ntpd("adopt", ready="notify")))
    slot = sim.core.slot("ntpd", 0)
    assert slot is not None and slot.pid == pid and slot.state.value == "ready"
    assert "ntpd[0] ready after 0.00s (adopted: running before taskforce started)" in (
        sim.messages()
    )
    sim.advance(60.0)
    assert slot.pid == pid and slot.state.value == "ready" and not sim.spawns("ntpd")
    assert_contract(sim)


def test_a_late_pidfile_at_shutdown_in_the_simulator_leaves_no_daemon() -> None:
    sim = daemonizing(config(ntpd=ntpd()), delay=1.0)
    sim.advance(0.3)
    sim.request_stop()
    assert sim.finished is None
    sim.settle()
    assert sim.finished is not None and not sim.alive()
    messages = sim.messages()
    assert messages.index("every task has stopped") > max(
        i for i, m in enumerate(messages) if "stopped: taskforce is exiting" in m
    )
    assert_contract(sim)


def test_adopt_at_shutdown_waits_for_the_pidfile_and_leaves_the_daemon_running() -> None:
    sim = daemonizing(config(ntpd=ntpd("adopt")), delay=1.0)
    sim.advance(0.3)
    sim.request_stop()
    assert sim.finished is None
    sim.settle()
    assert sim.finished is not None
    (daemon,) = sim.alive()
    assert sim.pidfiles[NTPD_PIDFILE] == daemon.pid and not daemon.received
    assert any("left running for adoption" in m for m in sim.messages())
    assert_contract(sim)


def test_a_stop_while_the_pidfile_is_awaited_stops_the_daemon_once_named() -> None:
    sim = daemonizing(config(ntpd=ntpd()), delay=1.0)
    sim.advance(0.3)
    sim.control(1, "control", {"ntpd": "off"})
    sim.settle()
    assert sim.finished is None and not sim.alive()
    (signal,) = [s for _, s in sim.signals("ntpd")]
    assert signal.pid == sim.pidfiles[NTPD_PIDFILE] and signal.signal == "SIGTERM"
    assert_contract(sim)


def test_shutdown_gives_up_on_a_pidfile_after_pidfile_timeout() -> None:
    cfg = config(ntpd=ntpd())
    sim = daemonizing(cast(dict[str, Any], freeze({**cfg, "settings": {"pidfile_timeout": 2}})), 9)
    sim.advance(0.3)
    sim.request_stop()
    sim.settle()
    assert sim.finished is not None
    stopped = [at for at, e in sim.logs if e.message == "every task has stopped"]
    assert stopped == [pytest.approx(T0 + 2.0)]
    assert any("no daemon after its start command: no pidfile" in m for m in sim.messages())


def test_a_forged_pidfile_is_refused_and_its_pid_never_signalled() -> None:
    """A task running as nobody writes the pid of a process outside it."""
    sim = daemonizing(config(ntpd=ntpd(user="nobody")), forging=("ntpd",))
    (stranger,) = sim.strangers
    warnings = sim.messages("warning", task="ntpd")
    assert (
        f"ntpd[0]: refused: pidfile {NTPD_PIDFILE} (owned by uid 65534, writable by a user "
        f"other than root) names pid {stranger}, which is not a process of ntpd[0]; "
        "it is not signalled"
    ) in warnings
    assert any("failing fast" in w and "its pidfile was refused (pid" in w for w in warnings)
    sim.advance(30)
    sim.request_stop()
    sim.settle()
    assert sim.finished is not None
    assert len(sim.spawns("ntpd")) > 3  # backed off and tried again, each time refused
    assert not sim.processes[stranger].received
    assert all(s.pid != stranger for _, s in sim.signals())
    assert_contract(sim)


def test_a_pidfile_only_root_can_write_may_name_an_older_process_outside_the_task() -> None:
    """systemd's rule: an adopted daemon need not carry our marker when its
    pidfile is root's; the same pid from a pidfile nobody owns is refused."""
    for owner, adopted in ((0, True), (65534, False)):
        sim = Simulation({"ntpd": DAEMONIZE}, start=T0)
        _MADE.append(sim)
        stranger = sim.add_stranger(("/usr/sbin/ntpd",))
        sim.write_pidfile(NTPD_PIDFILE, stranger, owner)
        sim.advance(1.0)
        sim.boot(config(ntpd=ntpd("adopt")))
        assert (sim.core.live_pids() == {stranger: ("ntpd", 0)}) is adopted
        assert (
            any(f"refused: pidfile {NTPD_PIDFILE} (owned by uid 65534" in m for m in sim.messages())
            is not adopted
        )
        assert_contract(sim)


def test_a_pidfile_read_recorded_before_its_facts_existed_is_accepted() -> None:
    """Older logs: the shell only reported a pid it had already accepted."""
    event = decode(
        {
            "type": "PidfileRead",
            "at": 1.0,
            "task": "t",
            "instance": 0,
            "generation": 1,
            "pid": 42,
            "error": "",
        }
    )
    assert isinstance(event, ev.PidfileRead)
    assert not event.writable_by_non_root and not event.started_after_file


def test_slots_without_deadlines_share_one_empty_timers_mapping() -> None:
    from taskforce.core.slots import NO_TIMERS

    core = Supervisor()
    core.handle(ev.Booted(at=T0, environ={"PATH": "/bin"}, host="h", fqdn="h", pid=1))
    loaded = ev.ConfigLoaded(
        at=T0, config=config(plain=task(), limited=task(time_limit=30)), roles=None
    )
    pids = iter(range(500, 600))

    def started(effects: tuple[fx.Effect, ...], at: float) -> None:
        for effect in effects:
            if isinstance(effect, fx.Spawn):
                core.handle(
                    ev.ProcessStarted(
                        at, effect.task, effect.instance, effect.generation, next(pids)
                    )
                )

    started(core.handle(loaded), T0)
    plain, limited = core.tasks["plain"].slots[0], core.tasks["limited"].slots[0]
    assert plain.timers is NO_TIMERS, "no deadline: no dict of its own"
    assert list(limited.timers.values()) == [T0 + 30]
    assert limited.timers is not NO_TIMERS and not NO_TIMERS
    # Its time limit runs out: stopped, restarted; the shared mapping stays empty.
    assert limited.pid is not None
    core.handle(ev.TimerFired(at=T0 + 30))
    exited = ev.ProcessExited(
        at=T0 + 30.5, pid=limited.pid, exit_code=None, signal="SIGTERM", group_alive=False
    )
    started(core.handle(exited), T0 + 30.5)
    assert not NO_TIMERS and plain.timers is NO_TIMERS
    assert limited.pid == 502, "restarted"
    with pytest.raises(TypeError):
        NO_TIMERS[next(iter(limited.timers), None)] = 1.0  # type: ignore[index]
