"""The supervisors of ``bench/rollout.py``: how each runs a pool of HTTP
workers and applies a code change.

Each class writes its config into its own folder, starts its daemon (with
the run's marker in the environment, which reaches every worker), changes
the workers' code (the version in their source) and applies the change the
way its users do, and stops everything it started.  Nothing here measures;
nothing here may leave a process running after ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import MARKER_VAR, read_bytes

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
__all__ = ["MARKER_VAR", "PEERS", "Supervisor", "Taskforce", "find_pm2"]


def replace(path: Path, text: str) -> None:
    """Write ``path`` whole, atomically, as an editor's save does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def version_module(version: str) -> str:
    return f'"""Written by bench/rollout.py."""\n\nVERSION = "{version}"\nBROKEN = False\n'


class Supervisor:
    name = ""

    def __init__(
        self, folder: Path, env: dict[str, str], options: argparse.Namespace, extra: Any
    ) -> None:
        self.folder = folder
        self.env = dict(env)
        self.options = options
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tool_seconds: float | None = None

    # -- the worker (Python; PM2 overrides)

    def prepare(self, version: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "httpworker.py", self.folder / "httpworker.py")
        replace(self.folder / "httpworker_version.py", version_module(version))
        self.write_config()

    def worker(self, *extra: str) -> list[str]:
        # -B: no .pyc; a cached one of the same size and second could win.
        return [
            sys.executable,
            "-B",
            str(self.folder / "httpworker.py"),
            *extra,
            "--warmup",
            str(self.options.warmup),
        ]

    def write_version(self, version: str) -> None:
        replace(self.folder / "httpworker_version.py", version_module(version))

    # -- the daemon

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def missing(self) -> str:
        return ""

    def version_command(self) -> list[str]:
        return []

    def start(self) -> None:
        with open(self.folder / "daemon.log", "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                env=self.env,
                start_new_session=True,
            )

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (read_bytes(str(self.folder / "daemon.log")) or b"")[-1500:]
            raise RuntimeError(
                f"{self.name} exited ({self.proc.returncode}): {tail.decode(errors='replace')}"
            )

    def change(self, version: str) -> None:
        self.write_version(version)
        self.tool_seconds = None

    def tool(self, argv: list[str]) -> None:
        """Run the command that applies a change; its duration is noted."""
        started = time.monotonic()
        done = subprocess.run(
            argv,
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=self.options.deadline,
        )
        self.tool_seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {done.returncode}: {done.stdout}{done.stderr}"
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Taskforce(Supervisor):
    def __init__(
        self,
        folder: Path,
        env: dict[str, str],
        options: argparse.Namespace,
        tree: Path,
        label: str,
    ) -> None:
        path = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
        super().__init__(folder, {**env, "PYTHONPATH": path}, options, tree)
        self.name = label
        self.legacy = False
        self.commit = ""

    @property
    def config(self) -> Path:
        return self.folder / "taskforce.conf"

    def version_command(self) -> list[str]:
        return [sys.executable, "-m", "taskforce", "-V"]

    def render(self) -> dict[str, Any]:
        warmup = self.options.warmup
        task: dict[str, Any] = {
            "control": "wait",
            "count": self.options.workers,
            "events": [{"type": "python", "command": "stop"}],
        }
        if self.legacy:
            task["commands"] = {"start": self.worker("--port", str(self.port))}
            task["start_delay"] = warmup
            return {"tasks": {"web": task}}
        task["commands"] = {"start": self.worker()}
        task["sockets"] = ["http"]
        task["ready"] = "notify"
        task["ready_timeout"] = 10
        task["rollout"] = {"max_surge": 1, "max_unavailable": 0}
        sockets = {"http": {"listen": f"127.0.0.1:{self.port}", "backlog": 1024}}
        return {"sockets": sockets, "tasks": {"web": task}}

    def write_config(self) -> None:
        replace(self.config, json.dumps(self.render(), indent=1) + "\n")

    def accepts_rollout(self) -> bool:
        """Whether this taskforce's config checker takes the rollout keys."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or 18080
        self.write_config()
        done = subprocess.run(
            [sys.executable, "-m", "taskforce", "-C", "-f", str(self.config), "-r", "-"],
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        return done.returncode == 0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "taskforce",
            "-e",
            "-f",
            str(self.config),
            "-r",
            "-",
            "-p",
            "-",
            # Should this benchmark be SIGKILLed, taskforce still stops its
            # workers and exits on its own.
            "--expires",
            str(int(self.options.budget) + 60),
        ]

    def describe(self) -> str:
        if self.legacy:
            return "workers bind SO_REUSEPORT, start_delay; change: the module saved (python event)"
        return (
            "sockets: held by taskforce, ready: notify, rollout max_surge 1; change: module saved"
        )


class Supervisord(Supervisor):
    name = "supervisord"

    @property
    def config(self) -> Path:
        return self.folder / "supervisord.conf"

    def version_command(self) -> list[str]:
        return [str(self.options.peers_bin / "supervisord"), "--version"]

    def missing(self) -> str:
        bin_ = self.options.peers_bin
        if not (bin_ / "supervisord").exists():
            return (
                f"no supervisord in {bin_} (python -m venv /tmp/peers && "
                "/tmp/peers/bin/pip install supervisor circus)"
            )
        return ""

    def write_config(self) -> None:
        argv = " ".join(self.worker("--port", str(self.port)))
        text = f"""[supervisord]
nodaemon=true
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s

[unix_http_server]
file=%(here)s/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock

[program:web]
command={argv}
numprocs={self.options.workers}
process_name=%(program_name)s_%(process_num)d
autorestart=true
stopsignal=TERM
stopwaitsecs=15
"""
        replace(self.config, text)

    def command(self) -> list[str]:
        return [str(self.options.peers_bin / "supervisord"), "-n", "-c", str(self.config)]

    def change(self, version: str) -> None:
        self.write_version(version)
        self.tool(
            [
                str(self.options.peers_bin / "supervisorctl"),
                "-c",
                str(self.config),
                "restart",
                "web:*",
            ]
        )

    def describe(self) -> str:
        return (
            "numprocs workers bind SO_REUSEPORT; change: module saved, supervisorctl restart web:*"
        )


class Circus(Supervisor):
    name = "circus"

    @property
    def config(self) -> Path:
        return self.folder / "circus.ini"

    def version_command(self) -> list[str]:
        return [str(self.options.peers_bin / "circusd"), "--version"]

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/circus.sock"

    def missing(self) -> str:
        if not (self.options.peers_bin / "circusd").exists():
            return f"no circusd in {self.options.peers_bin} (pip install circus)"
        return ""

    def write_config(self) -> None:
        argv = " ".join(self.worker("--fd", "$(circus.sockets.web)"))
        text = f"""[circus]
endpoint = {self.endpoint}
pubsub_endpoint = ipc://{self.folder}/pubsub.sock
stats_endpoint = ipc://{self.folder}/stats.sock
statsd = False

[watcher:web]
cmd = {argv}
numprocesses = {self.options.workers}
use_sockets = True
copy_env = True
graceful_timeout = 15

[socket:web]
host = 127.0.0.1
port = {self.port}
"""
        replace(self.config, text)

    def command(self) -> list[str]:
        return [
            str(self.options.peers_bin / "circusd"),
            "--log-output",
            str(self.folder / "circus.log"),
            str(self.config),
        ]

    def change(self, version: str) -> None:
        self.write_version(version)
        circusctl = str(self.options.peers_bin / "circusctl")
        self.tool(
            [
                circusctl,
                "--endpoint",
                self.endpoint,
                "--timeout",
                str(int(self.options.deadline)),
                "reload",
            ]
        )

    def describe(self) -> str:
        return "[socket:] held by circus, use_sockets; change: module saved, circusctl reload"


NODE_WORKER = """// Written by bench/rollout.py: the PM2 peer's worker.
const http = require("http");
const VERSION = "%s";
const port = Number(process.env.ROLL_PORT);
const warmup = Number(process.env.ROLL_WARMUP_MS || 0);
const server = http.createServer((req, res) => {
  const body = `${VERSION} ${process.pid}\\n`;
  res.writeHead(200, {"Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body),
                      "Connection": "close"});
  res.end(body);
});
setTimeout(() => {
  server.listen(port, "127.0.0.1", () => { if (process.send) process.send("ready"); });
}, warmup);
process.on("SIGINT", () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 9000).unref();
});
"""


class PM2(Supervisor):
    name = "pm2"

    def __init__(
        self, folder: Path, env: dict[str, str], options: argparse.Namespace, extra: Any
    ) -> None:
        super().__init__(folder, env, options, extra)
        self.env["PM2_HOME"] = str(folder / "pm2home")
        self.pm2 = str(extra)
        self.daemon_pid = 0

    def version_command(self) -> list[str]:
        # Not `pm2 --version`: that starts a pm2 daemon.
        package = Path(os.path.realpath(self.pm2)).parent.parent / "package.json"
        script = f"console.log(require({json.dumps(str(package))}).version, process.version)"
        return ["node", "-e", script]

    def prepare(self, version: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write_version(version)
        self.write_config()

    def write_version(self, version: str) -> None:
        replace(self.folder / "worker.js", NODE_WORKER % version)

    def write_config(self) -> None:
        app = {
            "name": "web",
            "script": str(self.folder / "worker.js"),
            "exec_mode": "cluster",
            "instances": self.options.workers,
            "wait_ready": True,
            "listen_timeout": 10000,
            "kill_timeout": 10000,
            "autorestart": True,
            "env": {
                "ROLL_PORT": str(self.port),
                "ROLL_WARMUP_MS": str(int(self.options.warmup * 1000)),
            },
        }
        replace(
            self.folder / "ecosystem.config.js",
            "module.exports = " + json.dumps({"apps": [app]}, indent=1) + ";\n",
        )

    def start(self) -> None:
        self.tool([self.pm2, "start", str(self.folder / "ecosystem.config.js")])
        pidfile = Path(self.env["PM2_HOME"]) / "pm2.pid"
        self.daemon_pid = int(pidfile.read_text().strip()) if pidfile.exists() else 0

    def alive(self) -> None:
        if self.daemon_pid and not Path(f"/proc/{self.daemon_pid}").exists():
            raise RuntimeError("the pm2 daemon exited")

    def change(self, version: str) -> None:
        self.write_version(version)
        self.tool([self.pm2, "reload", "web"])

    def stop(self) -> None:
        if not self.daemon_pid:
            return
        try:
            subprocess.run([self.pm2, "kill"], env=self.env, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        self.daemon_pid = 0

    def describe(self) -> str:
        return "cluster mode, wait_ready, Node worker; change: worker.js saved, pm2 reload web"


def find_pm2(explicit: str | None, env: dict[str, str]) -> tuple[str | None, str]:
    """The pm2 program and "" , or None and why it cannot be had."""
    if shutil.which("node") is None:
        return None, "no node on PATH"
    if explicit:
        return (
            (explicit, "")
            if os.access(explicit, os.X_OK)
            else (None, f"{explicit} is not executable")
        )
    found = shutil.which("pm2")
    if found:
        return found, ""
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taskforce-bench" / "pm2"
    )
    program = cache / "node_modules" / ".bin" / "pm2"
    if program.exists():
        return str(program), ""
    if shutil.which("npm") is None:
        return None, "no pm2 and no npm to install it"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"installing pm2 into {cache} with npm ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "pm2"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"npm install pm2 failed: {exc}"
    if done.returncode != 0 or not program.exists():
        return None, f"npm install pm2 failed: {done.stderr.strip()[-300:]}"
    return str(program), ""


PEERS: dict[str, type[Supervisor]] = {"supervisord": Supervisord, "circus": Circus, "pm2": PM2}
