"""Take docs/status-page.png: the status page of the bundled example, as a
controller sees it, with web's output open.

Runs a taskforce on ``examples/demo.conf`` in a temporary folder (listening
on a Unix socket and on a loopback port with a token, see
``tests/browser.py``), looks at it in headless Chromium, saves the
picture, and stops everything it started.

    python docs/screenshot.py [--out docs/status-page.png] [--width 1100 --height 1250]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from browser import TOKEN, chromium, demo_config, free_port, missing  # noqa: E402

from taskforce.tfclient import UnixConnection  # noqa: E402


def tasks(sock: str) -> dict[str, object]:
    conn = UnixConnection(sock, timeout=5)
    try:
        conn.request("GET", "/status/tasks")
        answer: dict[str, object] = json.loads(conn.getresponse().read())
        return answer
    finally:
        conn.close()


def wait(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshot: timed out waiting for {what}")
        time.sleep(0.1)


def click(driver: object, css: str) -> None:
    """Click the element, looking again if the page rebuilt it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            driver.find_element("css selector", css).click()  # type: ignore[attr-defined]
        except StaleElementReferenceException:
            return False
        return True

    wait(clicked, css)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "status-page.png"))
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1250)
    args = parser.parse_args()
    why = missing()
    if why is not None:
        raise SystemExit(f"screenshot: {why}")
    with tempfile.TemporaryDirectory(prefix="tfshot", dir="/tmp") as folder:
        root = Path(folder)
        sock, port = str(root / "s"), free_port()
        (root / "demo.json").write_text(demo_config(root, "demo", sock, port))
        (root / "demo.roles").write_text("db\nweb\n")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "taskforce", "-e", "-f", "demo.json", "-r", "demo.roles"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        driver = None
        try:
            wait(
                lambda: (
                    all(
                        slot["state"] == "ready"
                        for slot in tasks(sock)["web"]["processes"]  # type: ignore[index]
                    )
                    and len(tasks(sock)["web"]["processes"]) == 2
                ),  # type: ignore[index]
                "the example to be up",
            )
            time.sleep(2.5)  # a heartbeat or two in the output, some uptime
            driver = chromium(root / "profile", args.width, args.height)
            driver.get(f"http://127.0.0.1:{port}/")
            wait(lambda: driver.find_elements("css selector", "tr.slot"), "the page")
            click(driver, "#login summary")
            driver.find_element("id", "token").send_keys(TOKEN)
            click(driver, "#token-form button[type=submit]")
            wait(lambda: "may control" in driver.find_element("id", "who").text, "the token")
            click(driver, "button[data-action=logs][data-target=web]")
            wait(lambda: driver.find_elements("css selector", "#logs-lines .line"), "output")
            time.sleep(0.5)
            # Every task above the output panel.
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            driver.save_screenshot(args.out)
            print(f"screenshot: saved {args.out}")
        finally:
            if driver is not None:
                driver.quit()
            os.kill(daemon.pid, signal.SIGTERM)
            daemon.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
