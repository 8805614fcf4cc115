"""Comparison table of finished runs, like the papers' tables: methods as rows, HR/NDCG@K as columns.

Rows come from results JSONs (``results/<dataset>/<run>-<time>.json``). A row's label is its run name
(``SASRec``, ``LLMGenRec-igd-d3``) plus the hyper-parameters that distinguish it from other runs of the
same name (``LLMGenRec-cft-d3 (lambda=0.1)``); for repeated runs of one label the newest is kept
unless ``keep_all``. Each metric gets a relative improvement over a chosen base row, and rows
evaluated on different test samples (different ``test_fingerprint``) are flagged: their numbers are
not comparable.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")
METRIC_NAMES = {
    "hit": "HR",
    "ndcg": "NDCG",
    "recall": "Recall",
    "mrr": "MRR",
    "precision": "Precision",
    "map": "MAP",
}

# Hyper-parameters always checked when runs share a name (objective and decoding knobs of the papers).
LABEL_KEYS = (
    "beta",
    "beta_prime",
    "lambda",
    "ig_alpha",
    "temporal_embedding",
    "cetrec_cf_index",
    "cft_counterfactual",
    "tuning",
    "llm_path",
    "length_penalty",
    "prompt_template",
    "trie_items",
    "fill",
)
# Keys that never change what a run computes (paths, logging, batching that is normalised away).
IGNORED_KEYS = {
    "model",
    "cpu_threads",
    "log_ig_loss",
    "dataset",
    "objective",
    "decoder",
    "data_path",
    "data_root",
    "results_dir",
    "checkpoint_dir",
    "llm_cache_dir",
    "state",
    "show_progress",
    "resume",
    "evaluate",
    "gpu_id",
    "use_gpu",
    "device",
    "worker",
    "log_wandb",
    "wandb_project",
    "decode_batch_size",
    "micro_batch_size",
    "eval_batch_size",
    "checkpoint_steps",
    "mixed_precision",
    "gradient_checkpointing",
    "config_files",
    "benchmark_filename",
}


def metric_title(metric: str) -> str:
    """``hit@10`` -> ``HR@10`` (the papers' names)."""
    name, _, k = metric.partition("@")
    return f"{METRIC_NAMES.get(name.lower(), name)}@{k}" if k else METRIC_NAMES.get(name.lower(), name)


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Results JSONs given directly or found (non-recursively) in the given folders."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.json") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f"{path} does not exist: pass results JSONs or folders such as results/ml-100k."
            )
    return files


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Parse results JSONs; files that are not run results (no ``test_result``) are skipped with a note."""
    results = []
    for path in find_result_files(paths):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            print(f"[compare] skipping {path}: not valid JSON ({err})", file=sys.stderr)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("test_result"), dict):
            print(f"[compare] skipping {path}: no test_result (not a results file)", file=sys.stderr)
            continue
        data["_path"] = str(path)
        results.append(data)
    if not results:
        raise FileNotFoundError(
            "No results files found: train a model first (python run_recbole_llm.py ...), which writes "
            "results/<dataset>/<run>-<time>.json, and pass that folder."
        )
    return results


def _value(result: dict[str, Any], key: str) -> Any:
    """The value a run used: resolved ``hyper_parameters`` first (``beta: ~`` is 0.25 there), then config."""
    resolved = result.get("hyper_parameters") or {}
    if key in resolved:
        return resolved[key]
    config = result.get("config") or {}
    if key in config:
        return config[key]
    return (result.get("overrides") or {}).get(key)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_fmt_value(v) for v in value)
    return str(value)


def distinguishing_keys(group: Sequence[dict[str, Any]]) -> list[str]:
    """Hyper-parameters whose values differ among runs that share one run name (paper knobs first)."""
    if len(group) < 2:
        return []
    candidates = set(LABEL_KEYS)
    for result in group:
        candidates.update((result.get("overrides") or {}).keys())
    candidates -= IGNORED_KEYS
    varying = [
        key
        for key in candidates
        if len({json.dumps(_value(r, key), sort_keys=True, default=str) for r in group}) > 1
    ]
    order = {key: i for i, key in enumerate(LABEL_KEYS)}
    return sorted(varying, key=lambda k: (order.get(k, len(order)), k))


def labels_for(results: Sequence[dict[str, Any]]) -> list[str]:
    """One label per result: run name plus the hyper-parameters that tell same-named runs apart."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((str(r.get("dataset")), _run_name(r)), []).append(i)
    labels = [""] * len(results)
    for (_, run), members in groups.items():
        keys = distinguishing_keys([results[i] for i in members])
        for i in members:
            suffix = ", ".join(f"{k}={_fmt_value(_value(results[i], k))}" for k in keys)
            labels[i] = f"{run} ({suffix})" if suffix else run
    return labels


def _run_name(result: dict[str, Any]) -> str:
    return str(result.get("run") or result.get("model") or "run")


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
            "run": _run_name(r),
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
    if output is None:
        dirs = [Path(p) for p in paths if Path(p).is_dir()]
        output = dirs[0] if len(dirs) == 1 else Path(".")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "comparison.csv", "md": out / "comparison.md"}
    table.to_csv(files["csv"], index=False)
    markdown = to_markdown(table, metrics)
    files["md"].write_text(markdown)
    if plot:
        from recbole_llm.analysis.plots import plot_comparison

        files["png"] = plot_comparison(table, [m.lower() for m in metrics], out / "comparison.png")
    print(markdown)
    for warning in fingerprint_warnings(table):
        print(f"WARNING: {warning}", file=sys.stderr)
    return files


def same_split_report(results_file: str | Path, metrics: Sequence[str] = DEFAULT_METRICS) -> str | None:
    """Markdown table of a fresh run next to the other runs of its results folder on the same test samples.

    Printed at the end of every run so that ``run_recbole_llm.py`` reports an LLM run next to the
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
    if len({_run_name(r) for r in results}) < 2:
        return None
    base = "SASRec" if any(_run_name(r) == "SASRec" for r in results) else None
    return to_markdown(comparison_table(results, base=base, metrics=metrics), metrics)
