"""Values of the config that both sides read the same way: sizes, limits,
umasks, whole numbers in a range, the bounds of a task's count, the names of
signals.

The config checker (shell side) runs these on values written literally, to
report every problem with its line at once; the core runs them again on the
values that tags expand to.  One definition, so the two can never disagree.

This module must never do IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The most slots one task may have, in the config or asked for over the
#: control path: every slot gets its spec built up front, so a typo such as
#: ``count: 10000000`` must not take the daemon's memory or fork until the
#: host dies.
MAX_COUNT = 10_000

#: Signals a task's event or an operator's request may send: POSIX names.
#: (The shell turns numbers and aliases into these, as the host numbers them.)
SIGNALS = frozenset(
    "SIG" + name
    for name in (
        "ABRT ALRM BUS CHLD CONT FPE HUP ILL INT IO KILL PIPE PROF PWR QUIT SEGV "
        "STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ"
    ).split()
)


def signal_word(text: str) -> str:
    """A signal's name as written (``hup``, ``SIGHUP``, `` Term``) spelled
    canonically (``SIGHUP``); whether it names a signal is not judged here."""
    upper = text.strip().upper()
    return upper if upper.startswith("SIG") else "SIG" + upper


_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmgt])(?:i?b)?)?\s*\Z", re.IGNORECASE)
_UNLIMITED = ("unlimited", "infinity")


def parse_size(value: Any) -> int:
    """A whole number >= 0, or text such as ``512K``, ``10M``, ``1GiB`` (1024s)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a whole number >= 0 (or with K, M, G, T), got {value!r}")
    scale = 1 << 10 * " kmgt".index((match.group(2) or " ").lower())
    return int(match.group(1)) * scale


def parse_limit(value: Any) -> int | None:
    """A resource limit: ``parse_size``, or None for ``unlimited``."""
    if isinstance(value, str) and value.strip().lower() in _UNLIMITED:
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"expected a whole number >= 0 or 'unlimited', got {value!r}") from None


def parse_umask(value: Any) -> int:
    """A umask: text in octal (``"022"``, ``"0o022"``) or its number (18)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if text and all(ch in "01234567" for ch in text):
            number = int(text, 8)
    if number is None or not 0 <= number <= 0o777:
        raise ValueError(f'expected an octal umask from 000 to 777, such as "022", got {value!r}')
    return number


@dataclass(frozen=True)
class Whole:
    """Parses a whole number from ``low`` to ``high`` (text too: a tag's value)."""

    low: int
    high: int

    def __call__(self, value: Any) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            number = int(value)
        if number is None or not self.low <= number <= self.high:
            raise ValueError(
                f"expected a whole number from {self.low} to {self.high}, got {value!r}"
            )
        return number


def output_path(path: str | None) -> str:
    """An output file's path, which must be absolute (the daemon's cwd is
    nobody's business); ValueError otherwise."""
    if not path or not path.startswith("/"):
        raise ValueError(f"output file must be an absolute path, got {path!r}")
    return path


def limit_pair(soft: Any, hard: Any) -> tuple[int | None, int | None]:
    """A limit given as ``{soft: ..., hard: ...}``, parsed; ValueError when
    either is bad or the soft one is above the hard one (the kernel would
    refuse it at every start)."""
    low, high = parse_limit(soft), parse_limit(hard)
    if high is not None and (low is None or low > high):
        raise ValueError(f"soft limit {soft} is above hard limit {hard}")
    return low, high
