"""Figures of the papers' analyses (CFT Fig. 1/4, CETRec Fig. 4, IGD Fig. 1-3 and §4.2.1), one PNG each."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from recbole_llm.reporting.labels import metric_title
from recbole_llm.reporting.plots import grouped_bars, pyplot, save_figure

CONDITION_COLORS = {
    "with history": "tab:blue",
    "without history": "tab:orange",
    "history items": "tab:gray",
    "test targets": "tab:green",
}


def plot_popularity(frame: pd.DataFrame, path: str | Path, k: int) -> Path:
    """CFT Fig. 1/4: share of the top-K lists falling in each popularity group, per method and condition."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_temporal(frame: pd.DataFrame, path: str | Path) -> Path:
    """CETRec Fig. 4: change of each metric (and of the top-K lists) when histories are reversed."""
    plt = pyplot()
    methods = list(dict.fromkeys(frame["method"]))
    metrics = list(dict.fromkeys(frame["metric"]))
    series = {}
    for method in methods:
        rates = frame[frame["method"] == method].set_index("metric")["change_rate"]
        series[method] = [rates.get(m, math.nan) for m in metrics]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(metrics) * max(1, len(methods) / 2)), 4.5))
    names = [_temporal_name(m) for m in metrics]
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
    return save_figure(fig, path)


def _temporal_name(metric: str) -> str:
    name, _, k = metric.partition("@")
    if name in ("list_changed", "set_changed"):
        return f"top-{k} {name.split('_')[0]}\nchanged"
    return metric_title(metric)


def plot_entropy_steps(frame: pd.DataFrame, path: str | Path) -> Path:
    """IGD Fig. 1-3: mean entropy of the trie node after each decoding step, predicted vs ground truth."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_ig_loss(frame: pd.DataFrame, path: str | Path) -> Path:
    """IGD §4.2.1: mean token loss per epoch for zero-, low- and high-IG tokens."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if frame["epoch"].nunique() == 1:  # one epoch: bars per group (a line needs two points)
        groups = list(dict.fromkeys(frame["group"]))
        series = {
            run: [sub.set_index("group")["mean_loss"].get(g, math.nan) for g in groups]
            for run, sub in frame.groupby("run", sort=False)
        }
        grouped_bars(ax, [f"{g} IG" for g in groups], series, "mean token cross-entropy")
        ax.set_title(f"Training loss by token information-gain group (epoch {frame['epoch'].iloc[0]})")
        return save_figure(fig, path)
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
    return save_figure(fig, path)
