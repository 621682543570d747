"""Pictures of what trainfleet measured, as PNG or SVG files (matplotlib, no display):
a metric over steps, one line per rank; the point-to-point bandwidth between nodes as a
heatmap that names the slowest link."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from trainfleet.errors import UsageError

if TYPE_CHECKING:
    from trainfleet.netbench.results import NetBenchResult
    from trainfleet.agent.metrics import Series

UNITS = {"tokens/s": "tokens/s", "tok/s": "tokens/s", "samples/s": "samples/s", "time": "ms (as printed)",
         "step_time": "s (as printed)", "mfu": "%", "lr": "", "learning_rate": ""}
FORMATS = (".png", ".svg")


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plots need matplotlib", fix="pip install 'trainfleet[plot]'") from None
    matplotlib.use("Agg")  # files only: no display on a laptop over SSH, nor in CI
    import matplotlib.pyplot as plt

    return plt


def check_output(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"{path}: can write {' or '.join(FORMATS)} only", fix="name the file .png or .svg")


def metric_plot(series: dict[tuple[str, int], Series], metric: str, title: str, path: Path) -> int:
    """The metric over steps for every rank that prints it; returns the number of lines drawn."""
    check_output(path)
    ranks = sorted((key for key, s in series.items() if s.points.get(metric)), key=lambda k: k[1])
    if not ranks:
        printed = sorted({name for s in series.values() for name in s.points})
        raise UsageError(f"no rank printed {metric!r}",
                         fix=f"pick one of: {', '.join(printed)}" if printed else
                         "no metric was found in the job's output; pass --metrics-pattern with named groups")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5), dpi=110)
    for node, rank in ranks:
        points = series[(node, rank)].points[metric]
        axes.plot([p[0] for p in points], [p[1] for p in points], label=f"rank {rank} ({node})" if rank >= 0 else node,
                  marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.4)
    for index, step in enumerate(restart_steps(series, metric)):
        axes.axvline(step, color="grey", linestyle="--", linewidth=1, label="restart" if index == 0 else None)
    unit = UNITS.get(metric, "")
    axes.set_xlabel("step")
    axes.set_ylabel(f"{metric} ({unit})" if unit else metric)
    axes.set_title(_wrapped(title, figure))
    axes.grid(True, alpha=0.3)
    if len(ranks) > 1 or "restart" in axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return len(ranks)


def restart_steps(series: dict[tuple[str, int], Series], metric: str) -> list[float]:
    """Where the job started again (a restart resumed from its checkpoint): a rank's step
    that is not past the step it printed before."""
    found = set()
    for one in series.values():
        steps = [p[0] for p in one.points.get(metric, [])]
        found.update(after for before, after in zip(steps, steps[1:]) if after <= before)
    return sorted(found)


def _wrapped(title: str, figure: object) -> str:
    """A title that fits the figure's width (a long fleet path would be cut off)."""
    import textwrap

    width = figure.get_size_inches()[0]  # type: ignore[attr-defined]
    return "\n".join(textwrap.fill(part, max(30, int(width * 9))) for part in title.split("\n"))


def bandwidth_heatmap(result: NetBenchResult, title: str, path: Path) -> None:
    """Rows send, columns receive, Gbit/s in every cell; the slowest link outlined and named."""
    check_output(path)
    if not result.p2p:
        raise UsageError("no point-to-point figures to draw", fix="run `trainfleet bench net` on two or more nodes")
    nodes = list(dict.fromkeys([str(r["src"]) for r in result.p2p] + [str(r["dst"]) for r in result.p2p]))
    index = {n: i for i, n in enumerate(nodes)}
    grid = [[math.nan] * len(nodes) for _ in nodes]
    for record in result.p2p:
        grid[index[str(record["src"])]][index[str(record["dst"])]] = float(record["gbit_s"])  # type: ignore[arg-type]
    plt = _pyplot()
    size = max(4.0, min(16.0, 1.0 + 0.5 * len(nodes)))
    figure, axes = plt.subplots(figsize=(size + 1.5, size), dpi=110)
    image = axes.imshow(grid, cmap="viridis")
    figure.colorbar(image, ax=axes, label="Gbit/s")
    axes.set_xticks(range(len(nodes)), nodes, rotation=90 if len(nodes) > 8 else 0)
    axes.set_yticks(range(len(nodes)), nodes)
    axes.set_xlabel("receiving node")
    axes.set_ylabel("sending node")
    if len(nodes) <= 16:
        for row, values in enumerate(grid):
            for column, value in enumerate(values):
                if not math.isnan(value):
                    axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white")
    slow = result.slowest_link()
    if slow is not None:
        row, column = index[str(slow["src"])], index[str(slow["dst"])]
        axes.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        title += f"\nslowest link: {slow['src']} -> {slow['dst']} at {float(slow['gbit_s']):.2f} Gbit/s"  # type: ignore[arg-type]
    axes.set_title(_wrapped(title, figure))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
