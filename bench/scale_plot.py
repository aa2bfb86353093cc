"""The scaling curves of ``bench/scale.py`` as PNG files (matplotlib, Agg).

    python bench/scale.py --from-json results.json --plot [--plot-dir docs]

Reads the figures only; never runs anything. One PNG per group of figures,
sizes on a logarithmic axis; a supervisor's curve stops at the last size it
survived, and the size it did not survive is marked with an x on the axis
and named in the legend. matplotlib is in the ``bench`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"taskforce": "#1b6ac9", "supervisord": "#d9541e", "circus": "#2e9e44"}
MARKERS = {"taskforce": "o", "supervisord": "s", "circus": "^"}

#: file -> panels: (figure key, title, y label, log y)
FIGURES: dict[str, list[tuple[str, str, str, bool]]] = {
    "scale-memory.png": [
        ("pss_mib", "Daemon memory (PSS)", "MiB", False),
        ("uss_mib", "Daemon private memory (USS)", "MiB", False),
    ],
    "scale-start.png": [
        ("start_s", "Start all tasks: wall time", "seconds", True),
        ("start_cpu_s", "Start all tasks: daemon CPU", "CPU seconds", True),
    ],
    "scale-latency.png": [
        ("restart_median_ms", "Restart of one killed task (median)", "ms", True),
        ("reload_apply_ms", "One-task config change applied", "ms", True),
        ("status_median_ms", "Status of every task (median)", "ms", True),
    ],
    "scale-idle-replay.png": [
        ("idle_switches", "Idle wake-ups (10 s window)", "context switches", False),
        ("replay_steps_per_s", "Replay of the run's event log", "steps per second", True),
    ],
}


def series(
    results: dict[str, dict[str, Any]], name: str, key: str
) -> tuple[list[int], list[float], int | None]:
    """Sizes and values of one curve, and the size it did not survive (if any)."""
    xs: list[int] = []
    ys: list[float] = []
    lost = None
    for size, fig in sorted(results.get(name, {}).items(), key=lambda item: int(item[0])):
        if isinstance(fig, str):
            lost = int(size)
            break
        if key in fig:
            xs.append(int(size))
            ys.append(float(fig[key]))
    return xs, ys, lost


def short(value: float) -> str:
    """A figure as a label: whole numbers above 100, three digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot(payload: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    results = payload["results"]
    sizes: Sequence[int] = payload["sizes"]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    info = payload.get("machine", {})
    subtitle = (
        f"{info.get('cpus', '?')} CPUs ({info.get('cpu', '?')}), Linux {info.get('kernel', '?')}, "
        f"Python {info.get('python', '?')}; supervisor {info.get('supervisord', '?')}, "
        f"circus {info.get('circus', '?')}; bench/scale.py"
    )
    for filename, panels in FIGURES.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
        for ax, (key, title, unit, log_y) in zip(axes[0], panels, strict=True):
            for name in results:
                xs, ys, lost = series(results, name, key)
                if not xs:
                    continue  # nothing measured (replay: taskforce only)
                label = name if lost is None else f"{name} (did not survive {lost:,})"
                ax.plot(
                    xs,
                    ys,
                    marker=MARKERS.get(name, "o"),
                    color=COLOURS.get(name),
                    label=label,
                    linewidth=1.8,
                )
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(
                        short(y),
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, 5),
                        fontsize=7,
                        color=COLOURS.get(name),
                    )
                if lost is not None:
                    ax.plot(
                        [lost],
                        [0],
                        marker="x",
                        markersize=9,
                        color=COLOURS.get(name),
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                    )
            ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: short(v)))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
            ax.set_xticks(list(sizes))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
            ax.set_xlim(min(sizes) * 0.7, max(sizes) * 1.5)
            ax.set_xlabel("tasks")
            ax.set_ylabel(unit)
            ax.set_title(title, fontsize=11)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(subtitle, fontsize=7, y=0.995)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        path = folder / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
