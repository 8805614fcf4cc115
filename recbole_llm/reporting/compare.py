"""Comparison table of finished runs, like the papers' tables: methods as rows, HR/NDCG@K as columns.

Rows come from results JSONs (``results/<dataset>/<run>-<time>.json``), labelled by
:func:`~recbole_llm.reporting.labels.labels_for`; for repeated runs of one label the newest is kept
unless ``keep_all``. Each metric gets a relative improvement over a chosen base row, and rows
evaluated on different test samples (different ``test_fingerprint``) are flagged: their numbers are
not comparable.

Runs that differ only in ``seed`` are one row: the mean over seeds, ± the sample std, and the seed
count. A run whose results JSON names a ``rankings`` file (per-sample ranked lists, JSON Lines in the
test fingerprint's order) gets a 95 % interval per metric, and a paired test against the base row when
both were evaluated on the same samples (:mod:`recbole_llm.reporting.stats` says which interval and
test); cells whose difference from the base is significant are marked ``*``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbole_llm.reporting import stats
from recbole_llm.reporting.labels import DEFAULT_METRICS, labels_for, metric_title
from recbole_llm.reporting.plots import plot_comparison
from recbole_llm.reporting.results import load_results, result_run_name, result_value
from recbole_llm.utils.runs import resolve_path

SEED_KEY = "seed"
SIGNIFICANT = "*"


def _newest_key(result: dict[str, Any]) -> tuple[str, str]:
    return (str(result.get("created") or ""), Path(result.get("_path", "")).name)


def _by_label(
    results: Sequence[dict[str, Any]], labels: Sequence[str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Results grouped by (dataset, label), oldest first in each group."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, result in zip(labels, results, strict=True):
        groups.setdefault((str(result.get("dataset")), label), []).append(result)
    return {key: sorted(group, key=_newest_key) for key, group in groups.items()}


def pick_rows(results: Sequence[dict[str, Any]], keep_all: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(label, result)`` rows: the newest result per (dataset, label), or all of them with a time suffix."""
    rows = []
    for (_, label), group in _by_label(results, labels_for(results)).items():
        if not keep_all:
            rows.append((label, group[-1]))
        elif len(group) == 1:
            rows.append((label, group[0]))
        else:
            for result in group:
                stamp = result.get("created") or Path(result.get("_path", "")).stem
                rows.append((f"{label} @{stamp}", result))
    return rows


def _fmt_seed(seed: Any) -> str:
    return "" if seed is None else str(seed)


def _seed_of(result: dict[str, Any]) -> str:
    return json.dumps(result_value(result, SEED_KEY), sort_keys=True, default=str)


def pick_groups(
    results: Sequence[dict[str, Any]], keep_all: bool = False, labels: Sequence[str] | None = None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, runs)`` rows: runs that differ only in ``seed`` share a row (the newest run per seed).

    The label leaves the seed out. Runs of one label on other test samples than its newest run are left
    out (as :func:`pick_rows` keeps only the newest), so a group's seeds always share their test samples.
    With ``keep_all`` every run is its own row, as :func:`pick_rows` gives them. ``labels`` (one per
    result, e.g. a study's method names) replaces the automatic labels.
    """
    if keep_all and labels is None:
        return [(label, [result]) for label, result in pick_rows(results, keep_all=True)]
    rows = []
    labels = labels_for(results, ignore=(SEED_KEY,)) if labels is None else list(labels)
    for (_, label), group in _by_label(results, labels).items():
        fingerprint = group[-1].get("test_fingerprint")
        newest_per_seed = {_seed_of(r): r for r in group if r.get("test_fingerprint") == fingerprint}
        rows.append((label, sorted(newest_per_seed.values(), key=_seed_of)))
    return rows


def rankings_file(result: dict[str, Any]) -> Path | None:
    """The run's ``rankings.jsonl``, resolved like its checkpoint; ``None`` when none is recorded or found.

    Tried in order: ``paths.rankings.relative`` from the results JSON's folder, a relative ``rankings``
    from that folder too, ``paths.rankings.absolute``, then ``rankings`` as written.
    """
    raw = result.get("rankings")
    if not raw:
        return None
    anchor = Path(result["_path"]).parent if result.get("_path") else None
    _, tried = resolve_path(result, "rankings", anchor)
    if isinstance(raw, str) and not Path(raw).is_absolute() and anchor is not None:
        tried.insert(1 if (result.get("paths") or {}).get("rankings") else 0, anchor / raw)
    return next((p for p in tried if p.is_file()), None)


def read_rankings(path: str | Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """``((user, target) per sample, ranked item tokens per sample)`` of a ``rankings.jsonl``."""
    keys, items = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                sample = json.loads(line)
                keys.append((str(sample["user"]), str(sample["target"])))
                items.append([str(i) for i in sample["items"]])
    return keys, items


def group_samples(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str], notes: list[str]
) -> tuple[list[tuple[str, str]], dict[str, np.ndarray]] | None:
    """Per-sample metric values of a row (averaged over its seeds), or ``None`` without rankings files.

    ``None`` (with a note) also when seeds ranked different samples or a file disagrees with its JSON.
    """
    keys: list[tuple[str, str]] | None = None
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics if stats.has_sample_form(m)}
    for run in runs:
        path = rankings_file(run)
        if path is None:
            if run.get("rankings"):
                notes.append(
                    f"{run.get('_path')}: its rankings file {run['rankings']!r} is missing: no interval."
                )
            return None
        try:
            run_keys, items = read_rankings(path)
        except (OSError, ValueError, KeyError, TypeError) as err:  # truncated or hand-edited file
            notes.append(f"{path}: not a rankings file ({type(err).__name__}: {err}): no interval.")
            return None
        if keys is not None and run_keys != keys:
            notes.append(f"{path}: other samples than the other seeds' rankings: no interval.")
            return None
        keys = run_keys
        ranks = stats.target_ranks(items, [target for _, target in run_keys])
        test = {k.lower(): v for k, v in (run.get("test_result") or {}).items()}
        for m in values:
            per_sample = stats.sample_values(m, ranks)
            if test.get(m) is not None and abs(per_sample.mean() - float(test[m])) > 1e-4:
                notes.append(
                    f"{path}: {m} from the rankings is {per_sample.mean():.4f}, its results JSON says "
                    f"{float(test[m]):.4f}: the file does not belong to this run; no interval."
                )
                return None
            values[m].append(per_sample)
    if keys is None:
        return None
    return keys, {m: np.mean(v, axis=0) for m, v in values.items()}


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
    holm: bool = False,
    notes: list[str] | None = None,
    labels: Sequence[str] | None = None,
    keep_order: bool = False,
) -> pd.DataFrame:
    """One row per method and dataset; ``<metric>_improv`` = relative improvement over ``base`` (per dataset).

    Rows of several seeds add ``n_seeds``, ``seeds`` and ``<metric>_std``; rows with rankings files add
    ``<metric>_lo/_hi`` (95 % interval) and, paired with the base on the same samples, ``<metric>_p``,
    ``<metric>_diff_lo/_diff_hi`` and ``<metric>_sig`` (``*`` when p < 0.05; Holm-adjusted p in
    ``<metric>_p_holm`` and used for ``_sig`` with ``holm``). ``notes`` collects why a row got no interval.
    ``labels`` (one per result) names the rows instead of the automatic labels; ``keep_order`` keeps the
    rows in the order of their first result instead of baselines first, then alphabetical.
    """
    metrics = [m.lower() for m in metrics]
    notes = [] if notes is None else notes
    rows = []
    for label, runs in pick_groups(results, keep_all=keep_all, labels=labels):
        r = max(runs, key=_newest_key)
        tests = [{k.lower(): v for k, v in (run.get("test_result") or {}).items()} for run in runs]
        row = {
            "dataset": r.get("dataset"),
            "label": label,
            "run": result_run_name(r),
            "model": r.get("model"),
            "objective": r.get("objective"),
            "decoder": r.get("decoder"),
        }
        for m in metrics:
            mean, std, _ = stats.mean_std([float(t[m]) if t.get(m) is not None else math.nan for t in tests])
            row[m] = mean
            row[f"{m}_std"] = std
        row.update(
            {
                "n_seeds": len(runs),
                "seeds": ",".join(_fmt_seed(result_value(run, SEED_KEY)) for run in runs),
                "n_test_samples": r.get("n_test_samples"),
                "test_fingerprint": r.get("test_fingerprint"),
                "train_seconds": r.get("train_seconds"),
                "created": r.get("created"),
                "results_file": r.get("_path"),
                "_samples": group_samples(runs, metrics, notes),
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if not keep_order:  # baselines first, then the LLM variants, alphabetically (the papers' layout)
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
    table = _add_intervals(table, metrics, holm, notes)
    # Seed and interval columns only where some row has them: older results give today's table.
    if not (table["n_seeds"] > 1).any():
        table = table.drop(columns=["n_seeds", "seeds", *(f"{m}_std" for m in metrics)])
    return table.drop(columns="_samples")


def _paired(table: pd.DataFrame, i: int, base_i: int, notes: list[str]) -> bool:
    """Whether row ``i`` is tested against the base: both have samples, the same fingerprint and order."""
    if i == base_i or table.at[i, "_samples"] is None or table.at[base_i, "_samples"] is None:
        return False
    fingerprint = table.at[i, "test_fingerprint"]
    if not fingerprint or fingerprint != table.at[base_i, "test_fingerprint"]:
        return False  # other test samples: never paired
    if table.at[i, "_samples"][0] != table.at[base_i, "_samples"][0]:
        notes.append(
            f"{table.at[i, 'label']}: same test_fingerprint as the base but its rankings list other "
            "(user, target) samples: not tested."
        )
        return False
    return True


def _add_intervals(table: pd.DataFrame, metrics: Sequence[str], holm: bool, notes: list[str]) -> pd.DataFrame:
    """Interval, paired test and significance columns (see :func:`comparison_table`); none without samples."""
    tested = [m for m in metrics if stats.has_sample_form(m)]
    if table["_samples"].isna().all() or not tested:
        return table
    columns: dict[str, list[Any]] = {}
    for m in tested:
        for suffix in ("lo", "hi", "p", "p_holm", "diff_lo", "diff_hi"):
            columns[f"{m}_{suffix}"] = [math.nan] * len(table)
        columns[f"{m}_sig"] = [""] * len(table)
    for i in range(len(table)):
        if table.at[i, "_samples"] is not None:
            for m in tested:
                lo, hi = stats.metric_interval(m, table.at[i, "_samples"][1][m])
                columns[f"{m}_lo"][i], columns[f"{m}_hi"][i] = lo, hi
    for idx in table.groupby("dataset", sort=False).groups.values():
        bases = [i for i in idx if table.at[i, "is_base"]]
        if not bases:
            continue
        base_i = bases[0]
        paired = [i for i in idx if _paired(table, i, base_i, notes)]
        for m in tested:
            base_values = table.at[base_i, "_samples"][1][m] if paired else None
            for i in paired:
                values = table.at[i, "_samples"][1][m]
                columns[f"{m}_p"][i] = stats.sign_flip_p_value(values, base_values)
                lo, hi = stats.paired_bootstrap_interval(values, base_values)
                columns[f"{m}_diff_lo"][i], columns[f"{m}_diff_hi"][i] = lo, hi
            adjusted = stats.holm([columns[f"{m}_p"][i] for i in paired])
            for i, p_holm in zip(paired, adjusted, strict=True):
                columns[f"{m}_p_holm"][i] = p_holm
                p = p_holm if holm else columns[f"{m}_p"][i]
                columns[f"{m}_sig"][i] = SIGNIFICANT if p < stats.ALPHA else ""
    if not holm:
        columns = {k: v for k, v in columns.items() if not k.endswith("_p_holm")}
    return table.assign(**columns)


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
        seeded = "n_seeds" in sub and (sub["n_seeds"] > 1).any()
        header = ["Method", *[metric_title(m) for m in metrics], "Test samples"]
        if seeded:
            header.append("Seeds")
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
                if not _isnan(row.get(f"{m}_std", math.nan)):
                    text += f" ± {row[f'{m}_std']:.{decimals}f}"
                improv = row.get(f"{m}_improv", math.nan)
                if f"{m}_improv" in row and not row.get("is_base") and not _isnan(improv):
                    text += f" ({improv:+.1%})"
                if not _isnan(row.get(f"{m}_lo", math.nan)):
                    text += f" [{row[f'{m}_lo']:.{decimals}f}, {row[f'{m}_hi']:.{decimals}f}]"
                text += row.get(f"{m}_sig", "") or ""
                cells.append(text)
            n = row.get("n_test_samples")
            cells.append("–" if n is None or _isnan(n) else str(int(n)))
            if seeded:
                cells.append(str(int(row["n_seeds"])))
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
        lines += _legend(sub, metrics)
    for warning in fingerprint_warnings(table):
        lines.append(f"> **Warning** {warning}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _legend(sub: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Plain-words lines under a table with seeds or intervals: what ±, [lo, hi] and * mean."""
    lines = []
    if "n_seeds" in sub and (sub["n_seeds"] > 1).any():
        lines += ["Rows of several seeds: mean over seeds ± sample std (ddof=1); Seeds = their count.", ""]
    if any(f"{m}_lo" in sub and sub[f"{m}_lo"].notna().any() for m in metrics):
        lines.append(
            "[lo, hi]: 95 % interval over the test samples (Wilson for HR, Student t for NDCG; rows of "
            "several seeds: t over the seed-averaged per-sample values)."
        )
        if any(f"{m}_p" in sub and sub[f"{m}_p"].notna().any() for m in metrics):
            holm = any(f"{m}_p_holm" in sub for m in metrics)
            lines.append(
                f"{SIGNIFICANT}: differs from the base with p < {stats.ALPHA} in a two-sided paired sign-flip "
                "test on the same test samples"
                + (", Holm-adjusted over the rows" if holm else " (not corrected for several rows)")
                + "; p-values and the paired bootstrap interval of the difference are in comparison.csv."
            )
        lines.append("")
    return lines


def run_compare(
    paths: Sequence[str | Path],
    output: str | Path | None = None,
    base: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    keep_all: bool = False,
    sort_by: str | None = None,
    plot: bool = True,
    holm: bool = False,
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` (and ``comparison.png``) and print the Markdown."""
    results = load_results(paths)
    notes: list[str] = []
    table = comparison_table(
        results, base=base, metrics=metrics, keep_all=keep_all, sort_by=sort_by, holm=holm, notes=notes
    )
    for note in notes:
        print(f"[compare] {note}", file=sys.stderr)
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
