"""A headless Chromium for the status page's tests (and ``docs/screenshot.py``),
and the bundled example set up to be looked at in it.

Chromium and its driver come from the distribution (Debian: ``apt-get
install chromium chromium-driver``); Selenium drives them, and is told
where both are, so it never fetches a browser or a driver of its own.
``missing()`` says why a browser cannot be had here (the tests skip with
it).  Every browser gets a fresh profile in a folder of the caller's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TASKFORCE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKFORCE_CHROMEDRIVER", "/usr/bin/chromedriver")
#: What Chromium is started with: no sandbox (tests may run as root), no
#: network of its own (updates, sync, QUIC), nothing from a previous run.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
TOKEN = "page-test-token-0123456789"


def missing() -> str | None:
    """Why the page cannot be tested in a browser here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"no {path} ({package}): apt-get install chromium chromium-driver"
    return None


def chromium(profile: Path, width: int = 1200, height: int = 900) -> Any:
    """A headless Chromium (a Selenium driver) with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_config(root: Path, marker: str, socket_path: str, port: int) -> str:
    """The bundled example (``examples/demo.conf``), its programs copied
    under ``root/marker`` (so that their command lines carry the marker),
    listening on ``socket_path`` and on ``127.0.0.1:port``, where control
    needs the bearer token ``TOKEN``; the config's text."""
    examples = root / marker
    shutil.copytree(REPO / "examples" / "bin", examples / "bin")
    shutil.copy(REPO / "examples" / "db.settings", examples / "db.settings")
    token = root / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with open(REPO / "examples" / "demo.conf") as handle:
        config = yaml.safe_load(handle)
    config["defaults"]["EXAMPLES"] = str(examples)
    config["defaults"]["DEMO_HEARTBEAT"] = "2"
    config["settings"]["http"] = [
        {"listen": socket_path, "allow_control": True},
        {"listen": f"127.0.0.1:{port}", "allow_control": True, "token_file": str(token)},
    ]
    return json.dumps(config, indent=1)


class Forwarder:
    """A loopback TCP port forwarded to a Unix socket, as ``ssh -L
    PORT:SOCKET`` does: taskforce sees a peer with this process's uid."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(self.target)
            except OSError:
                client.close()
                server.close()
                continue
            self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
