"""Comparison table of finished runs, like the papers' tables: methods as rows, HR/NDCG@K as columns.

Rows come from results JSONs (``results/<dataset>/<run>-<time>.json``), labelled by
:func:`~recbole_llm.reporting.labels.labels_for`; for repeated runs of one label the newest is kept
unless ``keep_all``. Each metric gets a relative improvement over a chosen base row, and rows
evaluated on different test samples (different ``test_fingerprint``) are flagged: their numbers are
not comparable.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from recbole_llm.reporting.labels import DEFAULT_METRICS, labels_for, metric_title
from recbole_llm.reporting.plots import plot_comparison
from recbole_llm.reporting.results import load_results, result_run_name


def _newest_key(result: dict[str, Any]) -> tuple[str, str]:
    return (str(result.get("created") or ""), Path(result.get("_path", "")).name)


def pick_rows(results: Sequence[dict[str, Any]], keep_all: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(label, result)`` rows: the newest result per (dataset, label), or all of them with a time suffix."""
    labels = labels_for(results)
    by_label: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, result in zip(labels, results, strict=True):
        by_label.setdefault((str(result.get("dataset")), label), []).append(result)
    rows = []
    for (_, label), group in by_label.items():
        group = sorted(group, key=_newest_key)
        if not keep_all:
            rows.append((label, group[-1]))
        elif len(group) == 1:
            rows.append((label, group[0]))
        else:
            for result in group:
                stamp = result.get("created") or Path(result.get("_path", "")).stem
                rows.append((f"{label} @{stamp}", result))
    return rows


def relative_improvement(value: float | None, base: float | None) -> float:
    """``(value - base) / base``; NaN when either is missing or the base is 0 (undefined, not infinite)."""
    if value is None or base is None or _isnan(value) or _isnan(base) or base == 0:
        return math.nan
    return (value - base) / base


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _resolve_base(base: str, labels: list[str], runs: list[str], created: list[str] | None = None) -> int:
    """Row of ``base``: an exact label, else a run name (``SASRec``), else a unique label prefix.

    A run name shared by several rows (e.g. SASRec trained twice with different settings) resolves to
    the newest of them, with a note naming the others, so ``make demo`` keeps working on a results
    folder that holds older runs.
    """
    if base in labels:
        matches = [i for i, label in enumerate(labels) if label == base]
        return matches[-1]
    matches = [i for i, run in enumerate(runs) if run == base]
    if len(matches) > 1 and created is not None:
        newest = max(matches, key=lambda i: (str(created[i] or ""), i))
        others = "; ".join(labels[i] for i in matches if i != newest)
        print(
            f"[compare] --base {base!r} matches {len(matches)} rows: using the newest, {labels[newest]!r} "
            f"(others: {others}); pass an exact label to choose another.",
            file=sys.stderr,
        )
        return newest
    if len(matches) == 1:
        return matches[0]
    if not matches:
        matches = [i for i, label in enumerate(labels) if label.startswith(base)]
        if len(matches) == 1:
            return matches[0]
    options = "; ".join(labels)
    if len(matches) > 1:
        raise ValueError(f"--base {base!r} matches several rows; pass one exact label of: {options}")
    raise ValueError(f"--base {base!r} matches no row; pass one of: {options}")


def comparison_table(
    results: Sequence[dict[str, Any]],
    base: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    keep_all: bool = False,
    sort_by: str | None = None,
) -> pd.DataFrame:
    """One row per method and dataset; ``<metric>_improv`` = relative improvement over ``base`` (per dataset)."""
    metrics = [m.lower() for m in metrics]
    rows = []
    for label, r in pick_rows(results, keep_all=keep_all):
        test = {k.lower(): v for k, v in (r.get("test_result") or {}).items()}
        row = {
            "dataset": r.get("dataset"),
            "label": label,
            "run": result_run_name(r),
            "model": r.get("model"),
            "objective": r.get("objective"),
            "decoder": r.get("decoder"),
        }
        for m in metrics:
            row[m] = float(test[m]) if m in test and test[m] is not None else math.nan
        row.update(
            {
                "n_test_samples": r.get("n_test_samples"),
                "test_fingerprint": r.get("test_fingerprint"),
                "train_seconds": r.get("train_seconds"),
                "created": r.get("created"),
                "results_file": r.get("_path"),
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    # Baselines first, then the LLM variants, alphabetically (the papers' layout).
    table["_llm"] = table["model"].eq("LLMGenRec")
    table = table.sort_values(["dataset", "_llm", "label"], kind="stable").drop(columns="_llm")
    if sort_by:
        key = sort_by.lower()
        if key not in metrics:
            raise ValueError(f"--sort {sort_by!r} is not a table metric; choose one of {', '.join(metrics)}.")
        table = table.sort_values(["dataset", key], ascending=[True, False], kind="stable")
    table = table.reset_index(drop=True)
    table["test_set"] = ""
    table["is_base"] = False
    for idx in table.groupby("dataset", sort=False).groups.values():
        sub = table.loc[idx]
        codes: dict[str, str] = {}
        for i in idx:
            fp = table.at[i, "test_fingerprint"]
            if fp:
                codes.setdefault(fp, chr(ord("A") + len(codes)) if len(codes) < 26 else str(len(codes)))
                table.at[i, "test_set"] = codes[fp]
        if base is None:
            continue
        base_i = list(idx)[
            _resolve_base(base, sub["label"].tolist(), sub["run"].tolist(), sub["created"].tolist())
        ]
        table.at[base_i, "is_base"] = True
        for m in metrics:
            table.loc[idx, f"{m}_improv"] = [relative_improvement(v, table.at[base_i, m]) for v in sub[m]]
    return table


def fingerprint_warnings(table: pd.DataFrame) -> list[str]:
    """Human-readable warnings for datasets whose rows were evaluated on different test samples."""
    warnings = []
    for dataset, sub in table.groupby("dataset", sort=False):
        sets = {code for code in sub["test_set"] if code}
        missing = sub["test_fingerprint"].isna() | sub["test_fingerprint"].eq("")
        if len(sets) > 1:
            parts = [
                f"{code}: {', '.join(sub.loc[sub['test_set'] == code, 'label'])}" for code in sorted(sets)
            ]
            warnings.append(
                f"{dataset}: rows were evaluated on different test samples ({'; '.join(parts)}): compare only "
                "rows of the same test set (rerun with the same eval_sample_num and data)."
            )
        if missing.any() and len(sub) > 1:
            warnings.append(f"{dataset}: {', '.join(sub.loc[missing, 'label'])} record no test_fingerprint.")
    return warnings


def to_markdown(table: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, decimals: int = 4) -> str:
    """Markdown tables (one per dataset): best value per column in bold, improvement in parentheses."""
    metrics = [m.lower() for m in metrics]
    lines: list[str] = []
    for dataset, sub in table.groupby("dataset", sort=False):
        several_sets = len({c for c in sub["test_set"] if c}) > 1
        header = ["Method", *[metric_title(m) for m in metrics], "Test samples"]
        if several_sets:
            header.append("Test set")
        lines += [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {m: sub[m].max(skipna=True) for m in metrics}
        for _, row in sub.iterrows():
            cells = [row["label"] + (" (base)" if row.get("is_base") else "")]
            for m in metrics:
                value = row[m]
                if _isnan(value):
                    cells.append("–")
                    continue
                text = f"{value:.{decimals}f}"
                if value == best[m] and len(sub) > 1:
                    text = f"**{text}**"
                improv = row.get(f"{m}_improv", math.nan)
                if f"{m}_improv" in row and not row.get("is_base") and not _isnan(improv):
                    text += f" ({improv:+.1%})"
                cells.append(text)
            n = row.get("n_test_samples")
            cells.append("–" if n is None or _isnan(n) else str(int(n)))
            if several_sets:
                cells.append(str(row["test_set"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        base_rows = sub.loc[sub["is_base"], "label"].tolist()
        if base_rows:
            lines.append(
                f"Relative improvement in parentheses: (method − base) / base, base = {base_rows[0]}."
            )
            lines.append("")
    for warning in fingerprint_warnings(table):
        lines.append(f"> **Warning** {warning}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_compare(
    paths: Sequence[str | Path],
    output: str | Path | None = None,
    base: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    keep_all: bool = False,
    sort_by: str | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` (and ``comparison.png``) and print the Markdown."""
    results = load_results(paths)
    table = comparison_table(results, base=base, metrics=metrics, keep_all=keep_all, sort_by=sort_by)
    if output is None:  # beside the results compared (never the working folder, which may be anywhere)
        folders = [str((Path(p) if Path(p).is_dir() else Path(p).parent).resolve()) for p in paths]
        output = Path(os.path.commonpath(folders))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "comparison.csv", "md": out / "comparison.md"}
    table.to_csv(files["csv"], index=False)
    markdown = to_markdown(table, metrics)
    files["md"].write_text(markdown)
    if plot:
        files["png"] = plot_comparison(table, [m.lower() for m in metrics], out / "comparison.png")
    print(markdown)
    for warning in fingerprint_warnings(table):
        print(f"WARNING: {warning}", file=sys.stderr)
    return files


def same_split_report(results_file: str | Path, metrics: Sequence[str] = DEFAULT_METRICS) -> str | None:
    """Markdown table of a fresh run next to the other runs of its results folder on the same test samples.

    ``run_recbole_llm.py`` logs it at the end of every run, so an LLM run is reported next to the
    SASRec run of the same split without a second command. Runs on other test samples (another
    ``eval_sample_num``, other data) are left out: their numbers are not comparable. ``None`` when
    the folder holds no other run of this split.
    """
    path = Path(results_file)
    own = json.loads(path.read_text())
    fingerprint = own.get("test_fingerprint")
    if not fingerprint:
        return None
    results = [
        r
        for r in load_results([path.parent])
        if r.get("test_fingerprint") == fingerprint and r.get("dataset") == own.get("dataset")
    ]
    if len({result_run_name(r) for r in results}) < 2:
        return None
    base = "SASRec" if any(result_run_name(r) == "SASRec" for r in results) else None
    return to_markdown(comparison_table(results, base=base, metrics=metrics), metrics)
