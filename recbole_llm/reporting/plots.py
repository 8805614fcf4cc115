"""Matplotlib figures of reports: grouped bars, the comparison plot, and saving (Agg backend, no display).

matplotlib is imported on first use only: reading and tabling results needs no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from recbole_llm.reporting.labels import metric_title


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib  # deferred: heavy plotting library, only needed when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as above, only when a figure is drawn

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a 150-dpi PNG at ``path`` (folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    pyplot().close(fig)
    return path


def grouped_bars(
    ax,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    percent: bool = False,
    annotate: bool = True,
    colors: dict[str, str] | None = None,
    intervals: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    marks: dict[str, Sequence[str]] | None = None,
) -> None:
    """Bars of several series side by side for each category (NaN bars are left out).

    ``colors`` fixes a series' colour, so one condition looks the same in every panel; ``intervals``
    (``(lows, highs)`` per series) draws error bars, ``marks`` (``*`` per bar) is appended to its label.
    """
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
        missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
        heights = [0.0 if m else float(v) for v, m in zip(values, missing, strict=True)]
        color = (colors or {}).get(name)
        scale = 100 if percent else 1
        yerr = None
        if intervals and name in intervals:
            lows, highs = intervals[name]
            shown = [not m for m in missing]  # a bar drawn at 0 for a missing value gets no error bar
            yerr = [
                [
                    max(0.0, h - lo) * scale if ok and not math.isnan(lo) else 0.0
                    for h, lo, ok in zip(heights, lows, shown, strict=True)
                ],
                [
                    max(0.0, hi - h) * scale if ok and not math.isnan(hi) else 0.0
                    for h, hi, ok in zip(heights, highs, shown, strict=True)
                ],
            ]
        bars = ax.bar(
            xs,
            [h * scale for h in heights],
            width,
            label=name,
            color=color,
            yerr=yerr,
            capsize=2 if yerr else 0,
        )
        if annotate and len(categories) * n <= 40:
            fmt = "{:.1f}" if percent else "{:.3g}"
            suffixes = (marks or {}).get(name) or [""] * len(heights)
            labels = [
                "n/a" if m else fmt.format(h * scale) + suffix
                for h, m, suffix in zip(heights, missing, suffixes, strict=True)
            ]
            if yerr is None and n <= 3:
                ax.bar_label(bars, labels=labels, fontsize=7)
            else:  # above the interval, upright: side-by-side labels of close bars would overlap
                tops = [h * scale + (yerr[1][j] if yerr else 0.0) for j, h in enumerate(heights)]
                for x, top, label in zip(xs, tops, labels, strict=True):
                    ax.text(x, top, " " + label, ha="center", va="bottom", rotation=90, fontsize=7)
    ax.margins(y=0.2)  # room for the upright labels
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    if percent:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)


def plot_comparison(
    table: pd.DataFrame, metrics: Sequence[str], path: str | Path, marks_note: str | None = None
) -> Path:
    """Bars of each method's metrics, one panel per dataset; ``marks_note`` says what the bar marks mean
    when they are not compare's ``*`` (the study's ``▲a`` / ``▼a``)."""
    plt = pyplot()
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(max(6, 1.6 * len(metrics) + 0.4 * len(table)), 4 * len(datasets))
    )
    axes = [axes] if len(datasets) == 1 else list(axes)
    for ax, dataset in zip(axes, datasets, strict=True):
        sub = table[table["dataset"] == dataset]
        several_sets = "test_set" in sub and len({c for c in sub["test_set"] if c}) > 1
        names = [
            row["label"] + (f" [test set {row['test_set']}]" if several_sets else "")
            for _, row in sub.iterrows()
        ]
        rows = [row for _, row in sub.iterrows()]
        series = {name: [row[m] for m in metrics] for name, row in zip(names, rows, strict=True)}
        intervals = {
            name: (
                [row.get(f"{m}_lo", math.nan) for m in metrics],
                [row.get(f"{m}_hi", math.nan) for m in metrics],
            )
            for name, row in zip(names, rows, strict=True)
        }
        marks = {
            name: [row.get(f"{m}_sig", "") or "" for m in metrics]
            for name, row in zip(names, rows, strict=True)
        }
        grouped_bars(
            ax,
            [metric_title(m) for m in metrics],
            series,
            "test metric",
            annotate=len(series) <= 6,
            intervals=intervals,
            marks=marks,
        )
        title = f"{dataset}: test metrics"
        if any(f"{m}_lo" in sub for m in metrics):
            tested = any(f"{m}_p" in sub and sub[f"{m}_p"].notna().any() for m in metrics)
            if marks_note:
                title += f" (bars: 95 % interval; {marks_note})"
            else:
                title += " (bars: 95 % interval" + ("; *: p < 0.05 vs base, paired)" if tested else ")")
        ax.set_title(title)
    return save_figure(fig, path)
