"""Tables and charts for `lorakit search` and `lorakit compare`: CSV, markdown and matplotlib PNGs (Agg).

    write_csv(rows, "results.csv")                       # rows: list of dicts; columns in first-seen order
    print(markdown_table(rows, {"trial": "trial", "lora_r": "r", "objective": "accuracy"}))
    plot_heatmap(rows, "objective", "heatmap.png", {"lr": "log", "lora_r": "grid"})  # the searched dimensions
    plot_pareto(rows, "objective", "pareto.png")         # the metric vs trainable parameters, Pareto front marked
    plot_curves({"trial 3": "trials/3/log.jsonl"}, "curves.png")
    plot_comparison(rows, "validation_accuracy", "comparison.png")   # metric, parameters, time, memory

Rows are plain dicts (one per trial or method); a missing or None value is an empty cell and is left out of plots.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed), imported when first plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(value) -> str:
    """A table cell: integers with thousands separators, floats with 4 significant digits, None empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def human_bytes(count: int | None) -> str:
    if count is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """One line per row; the columns are the union of the rows' keys in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in row.items()})
    return Path(path)


def markdown_table(rows: list[dict], columns: dict[str, str], formatters: dict | None = None) -> str:
    """A GitHub markdown table of `columns` ({row key: header}); formatters maps a key to a cell function."""
    formatters = formatters or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [formatters.get(key, fmt)(row.get(key)) for key in columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]], maximize: bool = True) -> list[int]:
    """Indices of the points no other point beats: fewer-or-equal x (cost) and higher-or-equal y (metric; lower
    with maximize=False), one of them strictly. Sorted by x."""
    points = [(x, y if maximize else -y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _numeric(rows: list[dict], *keys: str) -> list[dict]:
    return [r for r in rows if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                   and math.isfinite(r[k]) for k in keys)]


def _effect(rows: list[dict], metric: str, name: str, scale: str) -> float:
    """How much `metric` moves with the dimension `name`: the spread (max - min) of its mean per value, or per
    quarter of the sorted values for a continuous range (scale "linear" / "log")."""
    ordered = sorted(rows, key=lambda r: r[name]) if scale != "grid" else rows
    groups: dict = {}
    for i, r in enumerate(ordered):
        key = (4 * i) // len(ordered) if scale != "grid" else fmt(r[name])
        groups.setdefault(key, []).append(r[metric])
    means = [sum(v) / len(v) for v in groups.values()]
    return max(means) - min(means) if len(means) > 1 else 0.0


def heatmap_dimensions(rows: list[dict], metric: str, scales: dict[str, str]) -> list[str]:
    """The dimensions of `scales` ({name: "grid" | "linear" | "log"}) that take two values or more among the rows,
    the one with the most effect on `metric` first."""
    varied = [n for n in scales if len({fmt(r.get(n)) for r in rows if r.get(n) is not None}) >= 2]
    return sorted(varied, key=lambda n: -_effect([r for r in rows if r.get(n) is not None], metric, n, scales[n]))


def _cells(ax, rows: list[dict], metric: str, x: str, y: str, best) -> object:
    """The best `metric` per (y, x) cell of two grid dimensions, annotated; returns the image."""
    xs = sorted({r[x] for r in rows}, key=_order)
    ys = sorted({r[y] for r in rows}, key=_order)
    grid = [[math.nan] * len(xs) for _ in ys]
    for r in rows:
        i, j = ys.index(r[y]), xs.index(r[x])
        grid[i][j] = r[metric] if math.isnan(grid[i][j]) else best(grid[i][j], r[metric])
    image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys])
    finite = [v for line in grid for v in line if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if value > middle else "white")
    return image


def _order(value) -> tuple:
    """Sort numbers by value and everything else (bools, names) by its text, numbers first."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if numeric else (1, 0, fmt(value))


def _axis_values(ax, axis: str, values: list, scale: str) -> list[float]:
    """Positions on a scatter axis: a range's numbers as they are (a log axis for a log range), a grid's values
    (and anything not a number) by their rank, labelled."""
    if scale != "grid" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if scale == "log":
            getattr(ax, f"set_{axis}scale")("log")
        return [float(v) for v in values]
    labels = [fmt(v) for v in sorted(set(values), key=_order)]
    getattr(ax, f"set_{axis}ticks")(range(len(labels)), labels)
    return [labels.index(fmt(v)) for v in values]


def plot_heatmap(rows: list[dict], metric: str, path: str | Path, label: str | None = None,
                 scales: dict[str, str] | None = None, maximize: bool = True) -> Path | None:
    """`metric` over the two searched dimensions with the most effect (scales: {name: "grid" | "linear" | "log"},
    default lora_r and lora_alpha as grids): the best value per cell for two grids, else a scatter coloured by
    the metric with log axes for log ranges; one dimension alone: the metric against it. None (no file) when no
    dimension takes two values."""
    scales = scales if scales is not None else {"lora_r": "grid", "lora_alpha": "grid"}
    rows = _numeric(rows, metric)
    dims = heatmap_dimensions(rows, metric, scales)
    if not dims:
        return None
    plt = _pyplot()
    if len(dims) == 1:
        (x,) = dims
        rows = [r for r in rows if r.get(x) is not None]
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ax.scatter(_axis_values(ax, "x", [r[x] for r in rows], scales[x]), [r[metric] for r in rows])
        ax.set_xlabel(x)
        ax.set_ylabel(readable(label or metric))
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{readable(label or metric)} against {x}")
        return _save(fig, path)
    y, x = dims[:2]  # the dimension with the most effect on the vertical axis
    rows = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    if scales[x] == scales[y] == "grid":
        n_x = len({fmt(r[x]) for r in rows})
        fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * n_x + 2.5), 0.8 * len({fmt(r[y]) for r in rows}) + 2.5))
        image = _cells(ax, rows, metric, x, y, max if maximize else min)
        title = f"{readable(label or metric)}: best per cell"
    else:
        fig, ax = plt.subplots(figsize=(7, 5))
        image = ax.scatter(_axis_values(ax, "x", [r[x] for r in rows], scales[x]),
                           _axis_values(ax, "y", [r[y] for r in rows], scales[y]),
                           c=[r[metric] for r in rows], cmap="viridis", s=60, edgecolors="black", linewidths=0.5)
        ax.grid(True, which="both", alpha=0.3)
        title = f"{readable(label or metric)} per trial"
    ax.set_xlabel(x + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(y + (" (log scale)" if ax.get_yscale() == "log" else ""))
    fig.colorbar(image, ax=ax, label=readable(label or metric))
    ax.set_title(title + (f" (also searched: {', '.join(dims[2:])})" if dims[2:] else ""), fontsize=10, wrap=True)
    return _save(fig, path)


def plot_pareto(rows: list[dict], metric: str, path: str | Path, label: str | None = None,
                names: str = "trial", maximize: bool = True) -> Path | None:
    """`metric` vs trainable parameters (log x), the Pareto front (fewest parameters for the metric) marked."""
    rows = _numeric(rows, metric, "trainable_params")
    if not rows:
        return None
    points = [(float(r["trainable_params"]), float(r[metric])) for r in rows]
    front = pareto_front(points, maximize)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", alpha=0.6, label="trials")
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", color="tab:red", label="Pareto front")
    for i in front:
        ax.annotate(fmt(rows[i].get(names)), points[i], textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(readable(label or metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"{readable(label or metric)} vs trainable parameters")
    return _save(fig, path)


def read_losses(log: str | Path) -> tuple[list[int], list[float]]:
    """(steps, training losses) from a run's log.jsonl (the step lines; evaluation lines are skipped)."""
    steps, losses = [], []
    for line in Path(log).read_text().splitlines():
        record = json.loads(line)
        if isinstance(record.get("loss"), (int, float)) and "eval" not in record:
            steps.append(record["step"])
            losses.append(record["loss"])
    return steps, losses


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot_curves(logs: dict[str, str | Path], path: str | Path, title: str = "training curves") -> Path | None:
    """Training loss vs step, one line per {label: log.jsonl} (faint: per step; solid: moving average); missing logs
    are skipped."""
    curves = {label: read_losses(log) for label, log in logs.items() if Path(log).is_file()}
    curves = {label: c for label, c in curves.items() if c[0]}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (steps, losses) in curves.items():
        raw = ax.plot(steps, losses, linewidth=0.8, alpha=0.3)[0]
        ax.plot(steps, moving_average(losses, max(1, len(losses) // 12)), color=raw.get_color(), label=label,
                linewidth=1.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def metric_cell(value) -> str:
    """A metric as comparison.md and the comparison chart both print it: 4 decimals."""
    return "" if value is None else f"{value:.4f}"


def readable(key: str) -> str:
    """An axis label from a row key: validation_accuracy -> validation accuracy."""
    return key.replace("_", " ")


def axis_limits(values: list[float], scale: str) -> tuple[float, float]:
    """An axis's limits from the data, with a margin and room on the right for the bars' labels. "zero": from 0
    (a cost); "data": around the values (a metric: 0.79 against 0.80 must show); "log": a third of the smallest
    value to ten times the largest (a 22M-parameter model's axis ends near 10^8, not 10^9)."""
    low, high = min(values), max(values)
    if scale == "log":
        return low / 3, high * 10
    if scale == "zero":
        return 0, high * 1.3 or 1
    span = high - low or abs(high) * 0.1 or 1
    return low - span * 0.5, high + span * 0.6


def _bars(ax, names: list[str], values: list[float], labels: list[str], xlabel: str, color: str,
          scale: str = "zero") -> None:
    """Horizontal bars of `values` per name, each labelled; limits from the data (axis_limits)."""
    low, high = axis_limits(values, scale)
    if scale == "log":
        ax.set_xscale("log")
    start = 0 if scale == "zero" else low  # each bar from the axis's left end
    bars = ax.barh(names, [v - start for v in values], left=start, color=color)
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.set_xlim(low, high)
    ax.set_xlabel(xlabel)


def plot_comparison(rows: list[dict], metric: str, path: str | Path, label: str | None = None) -> Path | None:
    """Per method, four panels of bars: `metric`, trainable parameters (log axis), training time, peak memory
    (the last two where the rows have them)."""
    rows = _numeric(rows, metric, "trainable_params")
    if not rows:
        return None
    names = [r["method"] for r in rows]
    panels = [(metric, metric_cell, label or readable(metric), "tab:blue", "data"),
              ("trainable_params", lambda v: f"{v:,}", "trainable parameters (log scale)", "tab:orange", "log"),
              ("train_seconds", lambda v: f"{v:,.0f} s", "train time (s)", "tab:green", "zero"),
              ("peak_memory_mb", lambda v: f"{v:,.0f} MB", "peak memory (MB)", "tab:red", "zero")]
    panels = [p for p in panels if len(_numeric(rows, p[0])) == len(rows)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.6 * len(rows) + 2), sharey=True)
    for ax, (key, cell, xlabel, color, scale) in zip(axes, panels):
        _bars(ax, names, [r[key] for r in rows], [cell(r[key]) for r in rows], xlabel, color, scale)
    axes[0].invert_yaxis()
    fig.suptitle(f"{label or readable(metric)} against cost, per method")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)
