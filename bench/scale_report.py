"""The table and the per-task costs of ``bench/scale.py``'s figures.

Reads figures only; never runs or measures anything. ``analyse`` fits a
straight line (least squares) through each supervisor's figure over the
sizes it survived, for the cost per task, and gives the cost per task
between each pair of neighbouring sizes (the marginal cost): when it
rises from one step to the next by more than half, the figure grows worse
than linear, and is flagged.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

ROWS: list[tuple[str, str, str]] = [
    ("pss_mib", "daemon PSS (MiB)", "{:.1f}"),
    ("uss_mib", "daemon USS (MiB)", "{:.1f}"),
    ("start_s", "start all: wall (s)", "{:.2f}"),
    ("start_cpu_s", "start all: daemon CPU (s)", "{:.2f}"),
    ("restart_median_ms", "restart one killed task, median (ms)", "{:.1f}"),
    ("reload_apply_ms", "one-task change applied (ms)", "{:.0f}"),
    ("reload_untouched_restarted", "  collateral: others restarted", "{:.0f}"),
    ("status_median_ms", "status of all tasks, median (ms)", "{:.1f}"),
    ("idle_switches", "idle wake-ups in the window", "{:.0f}"),
    ("idle_cpu_s", "idle CPU in the window (s)", "{:.3f}"),
    ("replay_steps", "run's event log: steps", "{:,.0f}"),
    ("replay_s", "  replayed in one process (s)", "{:.2f}"),
    ("replay_steps_per_s", "  steps per second", "{:,.0f}"),
]

#: Per-task slopes: figure, unit of the slope, factor from figure-per-task.
SLOPES = [
    ("pss_mib", "KiB/task", 1024),
    ("start_s", "ms/task", 1000),
    ("start_cpu_s", "CPU ms/task", 1000),
    ("restart_median_ms", "ms per 1,000 tasks", 1000),
    ("reload_apply_ms", "ms per 1,000 tasks", 1000),
    ("status_median_ms", "ms per 1,000 tasks", 1000),
]
#: A marginal cost this many times the one before it is "worse than linear".
WORSE = 1.5


def slope(points: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope of value over size."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(n for n, _ in points)
    my = statistics.fmean(v for _, v in points)
    den = sum((n - mx) ** 2 for n, _ in points)
    return sum((n - mx) * (v - my) for n, v in points) / den if den else None


def marginal(points: Sequence[tuple[int, float]]) -> list[float]:
    """Cost per task between each pair of neighbouring sizes."""
    return [(v2 - v1) / (n2 - n1) for (n1, v1), (n2, v2) in zip(points, points[1:], strict=False)]


def worse_than_linear(steps: Sequence[float]) -> bool:
    """A marginal cost well above the one before it (both positive)."""
    return any(b > WORSE * a > 0 for a, b in zip(steps, steps[1:], strict=False))


def analyse(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, by_size in results.items():
        for key, unit, factor in SLOPES:
            points = [
                (int(size), fig[key])
                for size, fig in sorted(by_size.items(), key=lambda x: int(x[0]))
                if isinstance(fig, dict) and key in fig
            ]
            value = slope(points)
            if value is not None:
                steps = marginal(points)
                out.setdefault(name, {})[key] = {
                    "slope": value * factor,
                    "unit": unit,
                    "marginal": [step * factor for step in steps],
                    "between": [
                        f"{a:,}-{b:,}" for (a, _), (b, _) in zip(points, points[1:], strict=False)
                    ],
                    "worse_than_linear": worse_than_linear(steps),
                }
    return out


def table(results: dict[str, dict[str, Any]], sizes: Sequence[int]) -> str:
    head = ["", "", *(f"{size:,}" for size in sizes)]
    rows = [head]
    for key, label, fmt in ROWS:
        for name in results:
            cells = []
            for size in sizes:
                fig = results[name].get(str(size))
                if isinstance(fig, dict) and key in fig:
                    cells.append(fmt.format(fig[key]))
                elif isinstance(fig, str):
                    cells.append("—")
                else:
                    cells.append("")
            if any(cells):
                rows.append([label, name, *cells])
    widths = [max(len(row[col]) for row in rows) for col in range(len(head))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[col]) if col < 2 else cell.rjust(widths[col])
            for col, cell in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def lost(results: dict[str, dict[str, Any]]) -> list[str]:
    return [
        f"{name} at {int(size):,}: {fig}"
        for name, by_size in results.items()
        for size, fig in by_size.items()
        if isinstance(fig, str)
    ]


def output(payload: dict[str, Any], options: argparse.Namespace) -> None:
    results = payload["results"]
    sizes = payload["sizes"]
    print(payload["machine_line"])
    for note in payload["notes"]:
        print(f"note: {note}")
    print(table(results, sizes))
    for line in lost(results):
        print(f"did not survive: {line}")
    payload["slopes"] = analyse(results)
    for name, by_key in payload["slopes"].items():
        print(f"per task, {name} (least squares; between neighbouring sizes):")
        for key, fig in by_key.items():
            steps = ", ".join(
                f"{between} {step:.3g}"
                for between, step in zip(fig["between"], fig["marginal"], strict=True)
            )
            flag = "  WORSE THAN LINEAR" if fig["worse_than_linear"] else ""
            print(f"  {key}: {fig['slope']:.3g} {fig['unit']} ({steps}){flag}")
    if options.plot:
        import scale_plot

        for path in scale_plot.plot(payload, options.plot_dir):
            print(f"wrote {path}")
