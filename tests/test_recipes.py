"""The fleet recipes in examples/ansible and examples/prometheus hold up.

- The playbook passes ``ansible-playbook --syntax-check``, and its roles
  template, rendered by Ansible itself for every host of the inventory,
  passes ``taskforce -C`` with the fleet's config and puts on each host the
  tasks the fleet example says (skipped without ``ansible``).
- The alert rules pass ``promtool check rules`` and their own
  ``promtool test rules`` cases, the scrape config ``promtool check config``
  (skipped without ``promtool``, which Debian's ``prometheus`` package has).
- Every ``taskforce_*`` metric the rules name is one a running taskforce
  serves, and the listener the Prometheus README shows is a valid config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_harness import Daemon, task, wait_for

from taskforce.config import load_config, load_config_text, load_roles
from taskforce.core.model import HostFacts
from taskforce.tfclient import Client, Unreachable

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "examples" / "ansible"
PROMETHEUS = ROOT / "examples" / "prometheus"
FLEET = ROOT / "examples" / "fleet"
FACTS = HostFacts(environ={"PATH": "/usr/bin:/bin"}, host="h1", fqdn="h1.example.com", pid=1)


def tool(name: str) -> str:
    """The path of ``name``: on PATH or beside this interpreter; else skip."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        how = "apt-get install prometheus" if name == "promtool" else "pip install ansible-core"
        pytest.skip(f"{name} is not installed ({how})")
    return found


def run(argv: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------- ansible


def test_playbook_syntax() -> None:
    playbook = tool("ansible-playbook")
    run([playbook, "--syntax-check", "-i", "inventory.ini", "site.yml"], ANSIBLE)


def test_playbook_gates_each_batch_on_tfctl_wait() -> None:
    """The play's shape the README promises: serial, no failure tolerated,
    the config validated with taskforce -C, tfctl wait last."""
    (play,) = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    assert play["serial"] and play["max_fail_percentage"] == 0
    steps = play["tasks"]
    assert "wait --timeout" in steps[-1]["ansible.builtin.command"]
    copies = [s["ansible.builtin.copy"] for s in steps if "ansible.builtin.copy" in s]
    assert sum("-C -f" in c.get("validate", "") for c in copies) == 2


# What each kind of host in examples/fleet runs (tests/test_docs.py, FLEET_SCOPE).
SCOPE = {
    "web": {"node_exporter", "logship", "nginx"},
    "app": {"node_exporter", "logship", "app", "worker", "scheduler"},
    "db": {"node_exporter", "logship", "postgres", "backup"},
}


def test_roles_template_for_every_host_passes_check_config(tmp_path: Path) -> None:
    from taskforce.config import check

    ansible = tool("ansible")
    dest = tmp_path / "{{ inventory_hostname }}.roles"
    run(
        [
            ansible,
            "taskforce",
            "-i",
            "inventory.ini",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src=templates/tf_roles.conf.j2 dest={dest}",
        ],
        ANSIBLE,
    )
    rendered = sorted(tmp_path.glob("*.roles"))
    assert [path.name.split(".")[0] for path in rendered] == [
        "app1",
        "app2",
        "app3",
        "db1",
        "web1",
        "web2",
    ]
    config_path = str(FLEET / "taskforce.conf")
    for path in rendered:
        done = subprocess.run(
            [sys.executable, "-m", "taskforce", "-C", "-f", config_path, "-r", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        roles = load_roles(str(path))
        specs = check(load_config(config_path, roles=roles, facts=FACTS), config_path, roles)
        running = {name for name, spec in specs.items() if spec.in_scope}
        assert running == SCOPE[path.name[: -len("1.example.com.roles")]]
    assert load_roles(str(tmp_path / "app1.example.com.roles")).names == ("app", "canary")


# ---------------------------------------------------------------- prometheus


def test_alert_rules_check() -> None:
    run([tool("promtool"), "check", "rules", "taskforce.rules.yml"], PROMETHEUS)


def test_alert_rules_fire_as_meant() -> None:
    run([tool("promtool"), "test", "rules", "taskforce.rules.test.yml"], PROMETHEUS)


def test_scrape_config_check(tmp_path: Path) -> None:
    """With the token and CA files it names pointed at stand-ins."""
    promtool = tool("promtool")
    text = (PROMETHEUS / "prometheus.yml").read_text()
    named = set(re.findall(r"/etc/prometheus/[\w.-]+", text))
    assert named, "the scrape config reads a token and a CA from /etc/prometheus"
    for path in named:
        (tmp_path / Path(path).name).write_text("stand-in\n")
    (tmp_path / "prometheus.yml").write_text(text.replace("/etc/prometheus/", f"{tmp_path}/"))
    shutil.copy(PROMETHEUS / "taskforce.rules.yml", tmp_path)
    run([promtool, "check", "config", "prometheus.yml"], tmp_path)


def _rule_metrics() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "taskforce.rules.yml").read_text())
    exprs = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    return set(re.findall(r"\btaskforce_\w+", exprs))


def test_rules_name_metrics_taskforce_serves(daemon: Daemon) -> None:
    sock = str(daemon.root / "control.sock")
    daemon.write_config({"tasks": {"a": task(daemon.marker, "a")}})
    daemon.start("-w", sock)
    client = Client(sock, timeout=5)

    def metrics() -> str | None:
        try:
            code, _, body = client.request("GET", "/metrics")
        except Unreachable:
            return None
        return body if code == 200 and 'taskforce_task_running{task="a"} 1' in body else None

    wait_for(lambda: metrics() is not None, what="a's process in /metrics")
    served = set(re.findall(r"^# TYPE (\w+)", metrics() or "", re.M))
    named = _rule_metrics()
    assert {"taskforce_task_failed", "taskforce_task_rollout"} <= named
    assert named <= served, f"the rules name metrics taskforce does not serve: {named - served}"
    assert daemon.stop() == 0


def test_readme_listener_is_a_valid_config() -> None:
    text = (PROMETHEUS / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    config = load_config_text(block, "examples/prometheus/README.md", roles=None, facts=FACTS)
    (_, metrics) = config["settings"]["http"]
    assert "allow_control" not in metrics, "the scrape listener only reads"
    assert f":{metrics['listen'].rsplit(':', 1)[1]}" in (PROMETHEUS / "prometheus.yml").read_text()
