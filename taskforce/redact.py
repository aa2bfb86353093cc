"""Secrets kept out of taskforce's own log lines.

The daemon tells ``LogSecrets`` what it learns (each config's
``secret_names``, the values under those names in the config and in every
spawned environment); a filter on the ``taskforce`` loggers replaces those
values with ``"<redacted>"`` in every line, whether the core's ``Log``
effect, an error message or a task's output line sent to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from taskforce.core import secrets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The loggers whose lines are filtered.
LOGGERS = ("taskforce", "taskforce.output")


class LogSecrets(logging.Filter):
    """A logging filter that hides known secret values."""

    def __init__(self) -> None:
        super().__init__()
        self.hider = secrets.Hider(secrets.SecretNames())
        self.entries = secrets.EntryValues()

    def install(self) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def config(self, config: Mapping[str, Any]) -> None:
        is_secret = self.hider.is_secret = secrets.SecretNames.of(config).same_as(
            self.hider.is_secret
        )
        tasks = config.get("tasks")
        if isinstance(tasks, Mapping):
            # Each task's entry is looked at once (see EntryValues), the rest always.
            self.hider.learn(secrets.secret_values({**config, "tasks": {}}, is_secret))
            self.hider.learn(self.entries.of(tasks, is_secret))
        else:
            self.hider.learn(secrets.secret_values(config, is_secret))

    def environment(self, env: Mapping[str, str]) -> None:
        is_secret = self.hider.is_secret
        found = [v for k, v in env.items() if is_secret(k) and v and "{" not in v]
        if found and not self.hider.values.issuperset(found):
            self.hider.learn(found)

    def hide_text(self, text: str) -> str:
        """``text`` (a task's output lines, many at once) with the known
        secret values replaced, as ``filter`` would replace them line by line."""
        return self.hider.hide(text) if self.hider.values else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.hider.values:
            message = record.getMessage()
            hidden = self.hider.hide(message)
            if hidden != message:
                record.msg, record.args = hidden, None
        return True
