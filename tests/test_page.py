"""The status page in a real browser (headless Chromium from the
distribution, driven by Selenium) against a real daemon running the bundled
example: it loads without a console error, shows every task and slot,
follows a kill and the replacement live, shows a task's output, and offers
its buttons only to a viewer who may control (here: one who gave the
listener's token).

Skipped, saying why, where Chromium or its driver is not installed
(``apt-get install chromium chromium-driver``).  Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import TOKEN, Forwarder, chromium, demo_config, free_port, missing
from daemon_harness import Daemon, wait_for
from test_control import call, short_dir

pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
]

DEMO_TASKS = ("db", "migrate", "reports", "web")


class Demo:
    """The bundled example under a daemon, and a browser looking at it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.sock = str(short_dir(daemon.root) / "s.taskforce")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        daemon.write_config(demo_config(daemon.root, daemon.marker, self.sock, self.port))
        daemon.write_roles("db", "web")
        daemon.start()
        wait_for(self.settled, timeout=30, what="the example to be up")
        self.driver: Any = None

    def tasks(self) -> dict[str, Any]:
        code, _, text = call(self.sock, "/status/tasks")
        assert code == 200, text
        answer: dict[str, Any] = json.loads(text)
        return answer

    def settled(self) -> bool:
        try:
            tasks = self.tasks()
        except OSError:
            return False
        web = tasks["web"]["processes"]
        return len(web) == 2 and all(slot["state"] == "ready" for slot in web)

    def open(self, *, token: bool = False, url: str | None = None) -> Any:
        self.driver = chromium(self.daemon.root / "profile")
        self.driver.get(url or self.url)
        self.wait_css("section.task[data-task=web] tr.slot", "the tasks to show")
        if token:
            self.click("#login summary", "the token form")
            self.driver.find_element("id", "token").send_keys(TOKEN)
            self.click("#token-form button[type=submit]", "the token's button")
            wait_for(lambda: "may control" in self.text("#who"), what="the page to know the token")
        return self.driver

    def text(self, css: str) -> str:
        from selenium.common.exceptions import StaleElementReferenceException

        # The page builds its elements afresh on every event: look again.
        for _ in range(20):
            try:
                found = self.driver.find_elements("css selector", css)
                return str(found[0].text) if found else ""
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept changing")

    def click(self, css: str, what: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked() -> bool:
            try:
                found = self.driver.find_elements("css selector", css)
                if found:
                    found[0].click()
                    return True
            except StaleElementReferenceException:
                pass
            return False

        wait_for(clicked, what=what)

    def wait_css(self, css: str, what: str, timeout: float = 10.0) -> Any:
        return wait_for(lambda: self.driver.find_elements("css selector", css), timeout, what)

    def slot_pid(self, slot: str) -> str:
        return self.text(f"tr.slot[data-slot='{slot}'] td.pid")

    def console_errors(self) -> list[str]:
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] in ("SEVERE", "ERROR")
        ]

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
            self.driver = None


@pytest.fixture
def demo(daemon: Daemon) -> Iterator[Demo]:
    shown = Demo(daemon)
    try:
        yield shown
    finally:
        shown.close()


def test_page_shows_every_task_and_follows_a_kill_live(demo: Demo) -> None:
    driver = demo.open()
    assert demo.text("#live") == "live"
    shown = {el.get_attribute("data-task") for el in driver.find_elements("css selector", ".task")}
    assert shown == set(DEMO_TASKS)
    tasks = demo.tasks()
    for name in DEMO_TASKS:
        for slot in tasks[name]["processes"]:
            row = f"{name}:{slot['instance']}"
            wait_for(
                lambda row=row, slot=slot: demo.slot_pid(row) == str(slot.get("pid", "")),
                what=f"{row}'s pid on the page",
            )
    assert "ready" in demo.text("tr.slot[data-slot='web:0'] td.state")
    assert "out of scope" in demo.text("section.task[data-task=reports]")
    old = int(demo.slot_pid("web:0"))
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    # The page shows the change within a second, without being reloaded.
    wait_for(lambda: demo.slot_pid("web:0") != str(old), timeout=1.0, what="the page to change")
    seen = time.monotonic() - killed
    new = wait_for(
        lambda: (
            demo.tasks()["web"]["processes"][0].get("pid") not in (None, old)
            and demo.tasks()["web"]["processes"][0]["pid"]
        ),
        what="the replacement",
    )
    wait_for(lambda: demo.slot_pid("web:0") == str(new), what="the replacement's pid on the page")
    assert "SIGKILL" in demo.text("tr.slot[data-slot='web:0'] td.reason")
    assert demo.console_errors() == []
    print(f"the page changed {seen * 1000:.0f} ms after the kill")


def test_a_viewer_gets_no_buttons_and_sees_output(demo: Demo) -> None:
    driver = demo.open()
    assert "read only" in demo.text("#who")
    for action in ("restart", "stop", "start"):
        assert driver.find_elements("css selector", f"button[data-action={action}]") == []
    demo.click("button[data-action=logs][data-target=web]", "web's output button")
    wait_for(lambda: "pid" in demo.text("#logs-lines"), what="web's output")
    lines = demo.text("#logs-lines")
    assert "web[0]" in lines and "web[1]" in lines, lines
    # New lines come as they are written (the demo beats every 2 s).
    count = len(driver.find_elements("css selector", "#logs-lines .line"))
    wait_for(
        lambda: len(driver.find_elements("css selector", "#logs-lines .line")) > count,
        what="a new line",
    )
    demo.click("#logs-close", "the close button")
    assert demo.console_errors() == []


def test_a_controller_restarts_stops_and_starts_from_the_page(demo: Demo) -> None:
    demo.open(token=True)
    old = demo.slot_pid("web:1")
    demo.click("tr.slot[data-slot='web:1'] button[data-action=restart]", "web:1's restart")
    wait_for(lambda: demo.slot_pid("web:1") not in ("", old), what="web:1 to be restarted")
    assert "restart" in demo.text("#message")
    demo.click("button[data-action=stop][data-target=db]", "db's stop button")
    wait_for(
        lambda: not any(slot.get("pid") for slot in demo.tasks()["db"]["processes"]),
        what="db to stop",
    )
    demo.click("button[data-action=start][data-target=db]", "db's start button")
    wait_for(lambda: demo.slot_pid("db:0") != "", what="db to run again")
    assert demo.console_errors() == []


def test_the_unix_socket_forwarded_as_ssh_does(demo: Demo) -> None:
    """Through the Unix socket (forwarded to a port, as ``ssh -L`` does) the
    kernel says who connects: this test's user, who may control without a
    token; the page's requests carry the header that tells them from
    another site's."""
    forward = Forwarder(demo.sock)
    try:
        demo.open(url=f"http://127.0.0.1:{forward.port}/")
        wait_for(lambda: "may control" in demo.text("#who"), what="the page to know the uid")
        old = demo.slot_pid("web:0")
        demo.click("tr.slot[data-slot='web:0'] button[data-action=restart]", "web:0's restart")
        wait_for(lambda: demo.slot_pid("web:0") not in ("", old), what="web:0 to be restarted")
        assert demo.console_errors() == []
    finally:
        demo.close()
        forward.close()
