"""Recorded runs replay exactly; divergences are found at the right step;
``simulate`` and ``plan`` say what the daemon then does."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, wait_for

from taskforce import tools
from taskforce.core.codec import decode, encode, freeze
from taskforce.core.snapshot import snapshot
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import Recorder, read_log

LOGS = Path(__file__).parent / "logs"
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("log", sorted(LOGS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_the_corpus_replays_exactly(log: Path) -> None:
    out = io.StringIO()
    assert tools.replay(str(log), out=out) == 0, out.getvalue()
    assert "every effect matched" in out.getvalue()


def test_the_corpus_covers_each_scenario() -> None:
    assert {p.stem for p in LOGS.glob("*.jsonl")} >= {
        "restart",
        "reload",
        "roles",
        "crash_loop",
        "shutdown",
    }


def test_a_hand_altered_log_is_reported_at_the_altered_step(tmp_path: Path) -> None:
    lines = (LOGS / "restart.jsonl").read_text().splitlines()
    altered = None
    for index, line in enumerate(lines):
        data = json.loads(line)
        spawns = [e for e in data.get("effects", []) if e["type"] == "Spawn"]
        if data.get("step", 0) > 2 and spawns:
            spawns[0]["argv"] = ["/usr/bin/somebody-else"]
            altered = data["step"]
            lines[index] = json.dumps(data)
            break
    assert altered is not None
    path = tmp_path / "altered.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    assert tools.replay(str(path), out=out) == 1
    text = out.getvalue()
    assert f"divergence at step {altered}" in text
    assert "somebody-else" in text
    assert f"{altered} steps matched before it" in text


def test_a_truncated_or_garbled_log_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text((LOGS / "restart.jsonl").read_text()[:-40])
    out = io.StringIO()
    assert tools.replay(str(path), out=out) == 2
    assert "bad.jsonl:" in out.getvalue() and "not JSON" in out.getvalue()


def test_the_timeline_reads_as_a_history() -> None:
    out = io.StringIO()
    assert tools.timeline(str(LOGS / "crash_loop.jsonl"), out=out) == 0
    text = out.getvalue()
    assert "crashy[0] exited 3" in text
    assert "-> start crashy[0]: /usr/bin/crashy" in text
    assert text.count("failing fast") == 1


def test_a_rotated_log_replays_file_by_file(tmp_path: Path) -> None:
    from taskforce.simulator import Simulation

    sim = Simulation()
    config = freeze(
        {
            "tasks": {"a": {"commands": {"start": ("/bin/a",)}, "count": 3}},
            "settings": {"start_limit": {"burst": 0}},
        }
    )
    sim.boot(config)
    for _ in range(40):
        sim.kill(sim.running()[("a", 1)])
        sim.advance(2)
    path = tmp_path / "run.jsonl"
    core = Supervisor()
    recorder = Recorder(str(path), snapshot=lambda: snapshot(core), max_bytes=8000, backups=50)
    for event, _ in sim.log:
        recorder(event, core.handle(event))
    recorder.close()
    files = sorted(tmp_path.glob("run.jsonl*"))
    assert len(files) > 2, "the log rotated"
    for file in files:
        out = io.StringIO()
        assert tools.replay(str(file), out=out) == 0, out.getvalue()
    snapshots = [m for f in files for m in read_log(str(f)) if getattr(m, "kind", "") == "snapshot"]
    assert len(snapshots) == len(files) - 1


def test_events_and_effects_round_trip_exactly() -> None:
    from taskforce.simulator import Simulation

    sim = Simulation()
    sim.boot(freeze({"tasks": {"a": {"commands": {"start": ("/bin/a", "x")}, "time_limit": 2.5}}}))
    sim.advance(7.25)
    for event, effects in sim.log:
        assert decode(json.loads(json.dumps(encode(event)))) == event
        for effect in effects:
            assert decode(json.loads(json.dumps(encode(effect)))) == effect


def test_plan_lists_what_each_kind_of_host_runs(tmp_path: Path) -> None:
    config = tmp_path / "fleet.conf"
    config.write_text(
        json.dumps(
            {
                "tasks": {
                    "web": {"roles": ["web"], "requires": "db", "commands": {"start": ["w"]}},
                    "db": {"roles": ["db"], "commands": {"start": ["d"]}},
                    "batch": {"roles": ["batch"], "commands": {"start": ["b"]}},
                    "agent": {"commands": {"start": ["a"]}},
                }
            }
        )
    )
    web = tmp_path / "web.roles"
    web.write_text("web\n")
    both = tmp_path / "both.roles"
    both.write_text("web\ndb\n")
    out = io.StringIO()
    status = tools.scope_plan(str(config), [str(web), str(both)], out=out)
    text = out.getvalue()
    assert status == 1, "web cannot get its db on a web-only host"
    assert "requires db, which is not run on this host: web will wait" in text
    assert "tasks no host runs: batch" in text
    web_part = text.split(str(both))[0]
    assert "agent" in web_part and "  web (wait)" in web_part and "  db (wait)" not in web_part


def test_plan_against_a_recorded_run_names_what_would_change(tmp_path: Path) -> None:
    new = tmp_path / "new.conf"
    new.write_text(
        json.dumps(
            {
                "tasks": {
                    "t1": {"commands": {"start": ["/usr/bin/t1"]}},
                    "t2": {"commands": {"start": ["/usr/bin/t2", "--newer"]}},
                    "t3": {"commands": {"start": ["/usr/bin/t3"]}},
                    "t9": {"commands": {"start": ["/usr/bin/t9"]}},
                }
            }
        )
    )
    out = io.StringIO()
    assert tools.diff_plan(str(new), None, str(LOGS / "reload.jsonl"), out=out) == 0
    text = out.getvalue()
    assert "start:   t9[0]" in text
    assert "t4[0], t4[1]" in text.split("stop:")[1].splitlines()[0]
    assert "restart: t2[0]" in text


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskforce", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_simulate_on_the_example_agrees_with_the_real_daemon(daemon: Daemon) -> None:
    """What `taskforce simulate` says the example does is what it then does."""
    root = EXAMPLES.parent
    script = daemon.root / "script.yaml"
    # The real migrate exits by itself after a second; in the simulator a
    # process does only what the script says.
    script.write_text('- {at: 2.5, exit: "migrate[0]", code: 0}\n')
    simulated = run_cli(
        "simulate", "-f", "examples/demo.conf", "-r", "examples/demo.roles", str(script), cwd=root
    )
    assert simulated.returncode == 0, simulated.stderr + simulated.stdout
    final = simulated.stdout.split("running at")[1]
    expected = sorted(line.split()[0] for line in final.splitlines()[1:] if line.strip())
    assert expected == ["db[0]", "web[0]", "web[1]"]
    starts = [
        line.split("-> start ")[1].split(":")[0]
        for line in simulated.stdout.splitlines()
        if "-> start " in line
    ]
    assert starts == ["db[0]", "migrate[0]", "web[0]", "web[1]"]

    # The real daemon, on a copy of the example (its control socket and the
    # settings file it watches stay in the test's folder).
    copy = daemon.root / "examples"
    subprocess.run(["cp", "-r", str(EXAMPLES), str(copy)], check=True)
    daemon.config.write_text((copy / "demo.conf").read_text())
    daemon.roles.write_text((copy / "demo.roles").read_text())
    daemon.start()
    log_order = wait_for(
        lambda: (lambda t: t if t.count("] started as pid") >= 4 else None)(daemon.log_text()),
        timeout=20,
        what="the example to start",
    )
    started = [
        line.split(" INFO ")[1].split(" started")[0]
        for line in log_order.splitlines()
        if " started as pid" in line and " INFO " in line and "[" in line
    ]
    assert started[:4] == starts
    assert os.path.exists(copy / "taskforce.sock")
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskforce.tfctl",
            "-s",
            str(copy / "taskforce.sock"),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    tasks = json.loads(status.stdout)
    running = sorted(
        f"{name}[{slot['instance']}]"
        for name, task in tasks.items()
        for slot in task.get("slots", task.get("processes", []))
        if slot.get("state") in ("running", "ready")
    )
    assert running == expected
