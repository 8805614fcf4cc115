"""Matplotlib figures of the analyses (Agg backend: no display needed, one PNG per analysis)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)
    return path


def grouped_bars(
    ax,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    percent: bool = False,
    annotate: bool = True,
    colors: dict[str, str] | None = None,
) -> None:
    """Bars of several series side by side for each category (NaN bars are left out).

    ``colors`` fixes a series' colour, so one condition looks the same in every panel.
    """
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
        missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
        heights = [0.0 if m else float(v) for v, m in zip(values, missing, strict=True)]
        color = (colors or {}).get(name)
        bars = ax.bar(xs, [h * (100 if percent else 1) for h in heights], width, label=name, color=color)
        if annotate and len(categories) * n <= 40:
            fmt = "{:.1f}" if percent else "{:.3g}"
            labels = [
                "n/a" if m else fmt.format(h * (100 if percent else 1))
                for h, m in zip(heights, missing, strict=True)
            ]
            ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    if percent:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)


def plot_comparison(table: pd.DataFrame, metrics: Sequence[str], path: str | Path) -> Path:
    """Bars of each method's metrics, one panel per dataset."""
    from recbole_llm.analysis.compare import metric_title

    plt = _pyplot()
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(max(6, 1.6 * len(metrics) + 0.4 * len(table)), 4 * len(datasets))
    )
    axes = [axes] if len(datasets) == 1 else list(axes)
    for ax, dataset in zip(axes, datasets, strict=True):
        sub = table[table["dataset"] == dataset]
        several_sets = "test_set" in sub and len({c for c in sub["test_set"] if c}) > 1
        series = {
            row["label"] + (f" [test set {row['test_set']}]" if several_sets else ""): [
                row[m] for m in metrics
            ]
            for _, row in sub.iterrows()
        }
        grouped_bars(ax, [metric_title(m) for m in metrics], series, "test metric", annotate=len(series) <= 6)
        ax.set_title(f"{dataset}: test metrics")
    return _save(fig, path)


CONDITION_COLORS = {
    "with history": "tab:blue",
    "without history": "tab:orange",
    "history items": "tab:gray",
    "test targets": "tab:green",
}


def plot_popularity(frame: pd.DataFrame, path: str | Path, k: int) -> Path:
    """CFT Fig. 1/4: share of the top-K lists falling in each popularity group, per method and condition."""
    plt = _pyplot()
    methods = list(dict.fromkeys(frame["method"]))
    groups = sorted(frame["group"].unique())
    ncols = min(2, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    width = max(5.5, 1.1 * len(groups) + 2.5)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, 3.8 * nrows + 0.5), sharey=True, squeeze=False
    )
    flat = list(axes.flat)
    for ax, method in zip(flat, methods, strict=False):
        sub = frame[frame["method"] == method]
        series = {}
        for condition in dict.fromkeys(sub["condition"]):
            shares = sub[sub["condition"] == condition].set_index("group")["share"]
            series[condition.replace("_", " ")] = [shares.get(g, math.nan) for g in groups]
        names = [
            f"G{g}" + (" (least)" if g == groups[0] else " (most)" if g == groups[-1] else "") for g in groups
        ]
        grouped_bars(
            ax,
            names,
            series,
            "share of top-K items",
            percent=True,
            annotate=len(groups) <= 6,
            colors=CONDITION_COLORS,
        )
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("popularity group (training targets)")
    for ax in flat[len(methods) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Top-{k} recommendations by item popularity group\n(higher group = more popular)", fontsize=11
    )
    return _save(fig, path)


def plot_temporal(frame: pd.DataFrame, path: str | Path) -> Path:
    """CETRec Fig. 4: change of each metric (and of the top-K lists) when histories are reversed."""
    from recbole_llm.analysis.compare import metric_title

    plt = _pyplot()
    methods = list(dict.fromkeys(frame["method"]))
    metrics = list(dict.fromkeys(frame["metric"]))
    series = {}
    for method in methods:
        rates = frame[frame["method"] == method].set_index("metric")["change_rate"]
        series[method] = [rates.get(m, math.nan) for m in metrics]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(metrics) * max(1, len(methods) / 2)), 4.5))
    names = [_temporal_name(m, metric_title) for m in metrics]
    grouped_bars(ax, names, series, "change on reversed histories", percent=True)
    ax.set_title("Temporal sensitivity: relative metric change and share of changed top-K lists")
    if any(math.isnan(v) for values in series.values() for v in values):
        ax.text(
            0.0,
            -0.16,
            "n/a: the metric is 0 on the original histories, so its change rate is undefined",
            transform=ax.transAxes,
            fontsize=7,
        )
    return _save(fig, path)


def _temporal_name(metric: str, metric_title) -> str:
    name, _, k = metric.partition("@")
    if name in ("list_changed", "set_changed"):
        return f"top-{k} {name.split('_')[0]}\nchanged"
    return metric_title(metric)


def plot_entropy_steps(frame: pd.DataFrame, path: str | Path) -> Path:
    """IGD Fig. 1-3: mean entropy of the trie node after each decoding step, predicted vs ground truth."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(frame["method"]):
        sub = frame[frame["method"] == method]
        pred = sub[sub["source"] == "predicted"].sort_values("step")
        truth = sub[sub["source"] == "ground_truth"].sort_values("step")
        (line,) = left.plot(
            pred["step"], pred["mean_entropy"], marker="o", markersize=3, label=f"{method}: predicted"
        )
        left.plot(
            truth["step"],
            truth["mean_entropy"],
            linestyle="--",
            color=line.get_color(),
            marker="x",
            markersize=3,
            label=f"{method}: ground truth",
        )
        diff = sub[sub["source"] == "difference"].sort_values("step")
        right.plot(
            diff["step"], diff["mean_entropy"], marker="o", markersize=3, color=line.get_color(), label=method
        )
    left.set_xlabel("decoding step (title token)")
    left.set_ylabel("entropy S(prefix) of the reference items (nats)")
    left.set_title("Entropy after each decoding step")
    left.legend(fontsize=7)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xlabel("decoding step (title token)")
    right.set_ylabel("predicted − ground truth (nats)")
    right.set_title("Entropy gap (> 0: predictions favour low-IG tokens)")
    right.legend(fontsize=7)
    return _save(fig, path)


def plot_ig_loss(frame: pd.DataFrame, path: str | Path) -> Path:
    """IGD §4.2.1: mean token loss per epoch for zero-, low- and high-IG tokens."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if frame["epoch"].nunique() == 1:  # one epoch: bars per group (a line needs two points)
        groups = list(dict.fromkeys(frame["group"]))
        series = {
            run: [sub.set_index("group")["mean_loss"].get(g, math.nan) for g in groups]
            for run, sub in frame.groupby("run", sort=False)
        }
        grouped_bars(ax, [f"{g} IG" for g in groups], series, "mean token cross-entropy")
        ax.set_title(f"Training loss by token information-gain group (epoch {frame['epoch'].iloc[0]})")
        return _save(fig, path)
    styles = ["-", "--", ":", "-."]
    colors = {"zero": "tab:blue", "low": "tab:orange", "high": "tab:red"}
    for r, run in enumerate(dict.fromkeys(frame["run"])):
        sub = frame[frame["run"] == run]
        for group in dict.fromkeys(sub["group"]):
            g = sub[sub["group"] == group].sort_values("epoch")
            ax.plot(
                g["epoch"],
                g["mean_loss"],
                linestyle=styles[r % len(styles)],
                marker="o",
                color=colors.get(group),
                label=f"{run}: {group} IG",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean token cross-entropy")
    ax.set_title("Training loss by token information-gain group")
    ax.legend(fontsize=7)
    return _save(fig, path)
