"""A study: several methods on one dataset and the same test samples, over seeds, in one paper-style table.

    python -m recbole_llm.study properties/study/ml-100k.yaml             # run what is missing, then tabulate
    python -m recbole_llm.study properties/study/ml-100k.yaml --dry_run   # print the commands only
    python -m recbole_llm.study properties/study/ml-100k.yaml --table     # tabulate the finished runs only

A study file (YAML) names the dataset, the seeds, the methods (a label and the ``--key=value`` overrides
of one ``run_recbole_llm.py`` run each), the overrides every method shares (``shared``, e.g.
``eval_sample_num``: every run then has the same test samples) and the base rows the table tests against
(``bases``). Each method x seed is one ordinary run, started as its own process (``launcher`` puts e.g.
``torchrun --nproc_per_node=4`` in front of the generative ones) with ``results_dir`` inside the study's
folder. ``<output>/study.json`` records each finished run as it ends, so an interrupted study continues
where it stopped when the same command is run again (a run whose command changed is run again).

The table (``study.csv``, ``study.md``, ``study.png``): per method and metric the value (mean ± std over
seeds), its 95 % interval over the test samples, and for each base a paired two-sided sign-flip test on
the same samples (Holm-corrected over the rows by default), marked ``▲x`` / ``▼x`` (significantly above /
below base ``x``) — the statistics of :mod:`recbole_llm.reporting.compare`.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from recbole_llm.config import properties_dir
from recbole_llm.model import GENERATIVE_MODELS
from recbole_llm.reporting.compare import comparison_table
from recbole_llm.reporting.labels import DEFAULT_METRICS, metric_title
from recbole_llm.reporting.plots import plot_comparison
from recbole_llm.reporting.results import load_results
from recbole_llm.reporting.stats import ALPHA
from recbole_llm.utils.errors import UserError, UserFileError, run_cli
from recbole_llm.utils.io import read_json, write_json_atomic, write_text_atomic

STUDY_KEYS = {
    "dataset": "the prepared dataset every method runs on",
    "seeds": "training seeds; each method runs once per seed (the test samples stay the same: sample_seed)",
    "methods": "label -> overrides of one run (model: ... required)",
    "shared": "overrides given to every method (e.g. eval_sample_num: 1000)",
    "bases": "labels of the rows every other row is tested against",
    "metrics": "table columns (default hit@5, ndcg@5, hit@10, ndcg@10)",
    "holm": "Holm-correct the p-values over the rows, per base and metric (default True)",
    "launcher": "command put in front of generative methods' runs, e.g. torchrun --nproc_per_node=4",
}
# Overrides the study sets itself: a method may not.
RESERVED = {"seed", "dataset", "results_dir", "resume", "evaluate", "seeds"}
MARK_UP, MARK_DOWN = "▲", "▼"
MANIFEST = "study.json"


@dataclass
class Method:
    label: str
    model: str
    overrides: dict[str, Any]
    launcher: list[str] = field(default_factory=list)


@dataclass
class Study:
    path: Path
    dataset: str
    seeds: list[int]
    methods: list[Method]
    bases: list[str]
    metrics: list[str]
    holm: bool


def _cli_value(value: Any) -> str:
    """A YAML value as RecBole's command line parses it back (lists and dicts as Python literals)."""
    if value is None:
        return "None"
    if isinstance(value, (list, tuple, dict)):
        return repr(value)
    return str(value)


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every mistake names the file, the entry and the fix."""
    path = Path(path)
    packaged = properties_dir() / "study" / path.name
    if not path.is_file() and path.parent.as_posix().endswith("properties/study") and packaged.is_file():
        path = packaged  # a pip-installed package run from any folder: the packaged copy
    if not path.is_file():
        raise UserFileError(
            f"study file {path} does not exist: pass a YAML file such as properties/study/ml-100k.yaml."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"study file {path} is not valid YAML ({' '.join(str(err).split())}).") from None
    if not isinstance(raw, dict):
        raise UserError(f"study file {path} must be a mapping with keys {', '.join(STUDY_KEYS)}.")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise UserError(
            f"study file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(STUDY_KEYS)}."
        )
    if not raw.get("dataset"):
        raise UserError(f"study file {path}: give the dataset (dataset: ml-100k).")
    seeds = raw.get("seeds", [2020])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise UserError(
            f"study file {path}: seeds must be distinct integers, e.g. seeds: [2020, 2021, 2022]."
        )
    shared = raw.get("shared") or {}
    methods_raw = raw.get("methods")
    if not isinstance(shared, dict):
        raise UserError(
            f"study file {path}: shared must be a mapping of keys to values (eval_sample_num: 1000)."
        )
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise UserError(f"study file {path}: give methods as label: {{model: ..., key: value}} entries.")
    default_launcher = shlex.split(str(raw.get("launcher") or ""))
    methods = []
    for label, entry in methods_raw.items():
        entry = dict(entry or {})
        if not entry.get("model"):
            raise UserError(f"study file {path}: method {label!r} needs a model (model: SASRec).")
        clash = sorted((set(entry) | set(shared)) & RESERVED)
        if clash:
            raise UserError(
                f"study file {path}: method {label!r} sets {', '.join(clash)}, which the study sets itself "
                "(seeds, dataset and results folder come from the study): remove them."
            )
        model = str(entry.pop("model"))
        launcher = entry.pop("launcher", None)
        if launcher is None:
            launcher_args = default_launcher if model in GENERATIVE_MODELS else []
        else:
            launcher_args = shlex.split(str(launcher))
        methods.append(Method(str(label), model, {**shared, **entry}, launcher_args))
    labels = [m.label for m in methods]
    bases = raw.get("bases") or []
    bases = [bases] if isinstance(bases, str) else [str(b) for b in bases]
    missing = [b for b in bases if b not in labels]
    if missing:
        raise UserError(
            f"study file {path}: base(s) {', '.join(missing)} are not methods; choose from {', '.join(labels)}."
        )
    metrics = [str(m).lower() for m in raw.get("metrics") or DEFAULT_METRICS]
    holm = raw.get("holm", True)
    if not isinstance(holm, bool):
        raise UserError(f"study file {path}: holm must be True or False.")
    return Study(path, str(raw["dataset"]), list(seeds), methods, bases, metrics, holm)


def run_command(study: Study, method: Method, seed: int, output: Path) -> list[str]:
    """The command of one run: the launcher, the CLI, the method's overrides, the study's seed and folder."""
    launcher = method.launcher or [sys.executable]
    # torchrun takes ``-m module`` itself; python does too: the same tail for both.
    args = [f"--model={method.model}", f"--dataset={study.dataset}"]
    args += [f"--{key}={_cli_value(value)}" for key, value in method.overrides.items()]
    args += [f"--seed={seed}", f"--results_dir={output / 'results'}"]
    return [*launcher, "-m", "recbole_llm.cli", *args]


def _read_manifest(output: Path) -> dict[str, Any]:
    path = output / MANIFEST
    if not path.is_file():
        return {"runs": []}
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise UserError(f"{path} is not a study record: move it away to start the study afresh.")
    return manifest


def _finished(manifest: dict[str, Any], output: Path, label: str, seed: int, args: list[str]) -> Path | None:
    """The results JSON of an earlier run of exactly this command, if it is still there."""
    for entry in manifest["runs"]:
        if entry.get("method") == label and entry.get("seed") == seed and entry.get("args") == args:
            results = output / entry["results_file"]
            if results.is_file():
                return results
    return None


def _result_files(folder: Path) -> set[Path]:
    return set(folder.glob("*.json")) if folder.is_dir() else set()


def run_study(study: Study, output: Path, dry_run: bool = False, log=print) -> list[dict[str, Any]]:
    """Run every method x seed not finished yet (one process each, in the study file's order)."""
    manifest = _read_manifest(output)
    results_folder = output / "results" / study.dataset
    plan = [(m, s) for m in study.methods for s in study.seeds]
    for n, (method, seed) in enumerate(plan, start=1):
        command = run_command(study, method, seed, output)
        args = command[command.index("recbole_llm.cli") + 1 :]
        where = f"[study {n}/{len(plan)}] {method.label}, seed {seed}"
        done = _finished(manifest, output, method.label, seed, args)
        if done is not None:
            log(f"{where}: finished earlier ({done})")
            continue
        log(f"{where}: {shlex.join(command)}")
        if dry_run:
            continue
        before = _result_files(results_folder)
        t0 = time.perf_counter()
        code = subprocess.call(command)
        seconds = time.perf_counter() - t0
        new = sorted(_result_files(results_folder) - before)
        if code != 0 or len(new) != 1:
            why = f"exit code {code}" if code != 0 else f"{len(new)} new results files in {results_folder}"
            raise UserError(
                f"{where} failed ({why}); the finished runs are kept in {output / MANIFEST}: fix the cause "
                "and run the same study command again to continue from this run."
            )
        manifest["runs"] = [
            e for e in manifest["runs"] if not (e.get("method") == method.label and e.get("seed") == seed)
        ]
        manifest["runs"].append(
            {
                "method": method.label,
                "seed": seed,
                "args": args,
                "results_file": str(new[0].relative_to(output)),
                "seconds": round(seconds, 1),
            }
        )
        manifest["study_file"] = str(study.path)
        write_json_atomic(output / MANIFEST, manifest, indent=2)
        log(f"{where}: done in {seconds / 60:.1f} min -> {new[0]}")
    return manifest["runs"]


# ------------------------------------------------------------------------------------------------ table
def study_table(study: Study, output: Path) -> pd.DataFrame:
    """One row per method (seeds pooled), intervals, and per base its p-values and marks."""
    manifest = _read_manifest(output)
    labels_by_file = {}
    for entry in manifest["runs"]:
        if any(m.label == entry["method"] for m in study.methods) and entry["seed"] in study.seeds:
            labels_by_file[str((output / entry["results_file"]).resolve())] = entry["method"]
    if not labels_by_file:
        raise UserError(
            f"{output / MANIFEST} records no finished run of this study: run it first (without --table)."
        )
    results = load_results(list(labels_by_file))
    labels = [labels_by_file[str(Path(r["_path"]).resolve())] for r in results]
    order = {m.label: i for i, m in enumerate(study.methods)}
    ordered = sorted(zip(labels, results, strict=True), key=lambda pair: order[pair[0]])
    labels, results = [p[0] for p in ordered], [p[1] for p in ordered]
    fingerprints = {r.get("test_fingerprint") for r in results}
    if len(fingerprints) > 1:
        raise UserError(
            f"the runs of {output} were evaluated on different test samples ({len(fingerprints)} fingerprints): "
            "a study needs one shared eval_sample_num and data for every method (set it under shared:)."
        )
    kwargs = {"metrics": study.metrics, "holm": study.holm, "labels": labels, "keep_order": True}
    notes: list[str] = []
    table = comparison_table(results, base=None, notes=notes, **kwargs)
    present = set(table["label"])
    for code, base in zip(_codes(study.bases), study.bases, strict=False):
        if base not in present:
            continue
        with_base = comparison_table(results, base=base, **kwargs).set_index("label")
        for m in study.metrics:
            p = f"{m}_p_holm" if study.holm else f"{m}_p"
            for column in (f"{m}_p", f"{m}_p_holm", f"{m}_diff_lo", f"{m}_diff_hi"):
                if column in with_base:
                    table[f"{column}_vs_{base}"] = table["label"].map(with_base[column])
            if p not in with_base:
                continue
            marks = []
            for label, value in zip(table["label"], table[m], strict=True):
                pv = with_base.at[label, p]
                base_value = with_base.at[base, m]
                significant = not math.isnan(pv) and pv < ALPHA and label != base
                marks.append((MARK_UP if value > base_value else MARK_DOWN) + code if significant else "")
            table[f"{m}_vs_{base}"] = marks
    for note in notes:
        print(f"[study] {note}", file=sys.stderr)
    # The base-less table's empty test columns: the study's tests are the per-base ``_vs_<base>`` ones.
    empty = [
        f"{m}_{suffix}" for m in study.metrics for suffix in ("p", "p_holm", "diff_lo", "diff_hi", "sig")
    ]
    return table.drop(columns=[c for c in empty if c in table], errors="ignore")


def _codes(bases: Sequence[str]) -> list[str]:
    return [chr(ord("a") + i) for i in range(len(bases))]


def to_markdown(table: pd.DataFrame, study: Study, decimals: int = 4) -> str:
    """The paper-style table: value [95 % interval] and significance marks per base, then a legend."""
    metrics = study.metrics
    seeded = "n_seeds" in table and (table["n_seeds"] > 1).any()
    header = ["Method", *[metric_title(m) for m in metrics], "Test samples", *(["Seeds"] if seeded else [])]
    lines = [f"### {study.dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["label"]]
        for m in metrics:
            value = row[m]
            if value is None or math.isnan(value):
                cells.append("–")
                continue
            text = f"{value:.{decimals}f}"
            if seeded and not math.isnan(row.get(f"{m}_std", math.nan)):
                text += f" ± {row[f'{m}_std']:.{decimals}f}"
            if not math.isnan(row.get(f"{m}_lo", math.nan)):
                text += f" [{row[f'{m}_lo']:.{decimals}f}, {row[f'{m}_hi']:.{decimals}f}]"
            marks = " ".join(row.get(f"{m}_vs_{b}", "") or "" for b in study.bases).strip()
            cells.append(text + (f" {marks}" if marks else ""))
        n = row.get("n_test_samples")
        cells.append("–" if n is None or (isinstance(n, float) and math.isnan(n)) else str(int(n)))
        if seeded:
            cells.append(str(int(row["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_legend(study, seeded)]
    return "\n".join(lines).rstrip() + "\n"


def _legend(study: Study, seeded: bool) -> list[str]:
    lines = ["[lo, hi]: 95 % interval over the test samples (Wilson for HR, Student t for NDCG)."]
    if seeded:
        lines.append(
            "± : sample std over the seeds (ddof 1); the interval uses the seed-averaged per-sample values."
        )
    if study.bases:
        names = ", ".join(f"{c} = {b}" for c, b in zip(_codes(study.bases), study.bases, strict=False))
        correction = "Holm-corrected over the rows" if study.holm else "not corrected for several rows"
        lines.append(
            f"{MARK_UP}x / {MARK_DOWN}x: significantly above / below base x ({names}): two-sided paired sign-flip "
            f"test on the same test samples, p < {ALPHA}, {correction}. No mark: the difference is inside the "
            "noise of these samples, not a tie proven. p-values and paired bootstrap intervals of each "
            "difference are in study.csv."
        )
    return lines


def write_table(study: Study, output: Path, log=print) -> dict[str, Path]:
    table = study_table(study, output)
    files = {"csv": output / "study.csv", "md": output / "study.md", "png": output / "study.png"}
    write_text_atomic(files["csv"], table.to_csv(index=False))
    markdown = to_markdown(table, study)
    write_text_atomic(files["md"], markdown)
    plot_table = table.copy()
    first = study.bases[0] if study.bases else None
    for m in study.metrics:  # the plot's * marks: significance against the first base
        plot_table[f"{m}_sig"] = plot_table.get(f"{m}_vs_{first}", "") if first else ""
    note = f"{MARK_UP}a/{MARK_DOWN}a: vs {first}, p < {ALPHA}" if first else None
    plot_comparison(plot_table, study.metrics, files["png"], marks_note=note)
    log(markdown)
    return files


# -------------------------------------------------------------------------------------------------- CLI
def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_llm.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study_file", help="YAML study file (see properties/study/)")
    parser.add_argument("--output", default=None, help="study folder [studies/<study file name>]")
    parser.add_argument("--dry_run", action="store_true", help="print each run's command; run nothing")
    parser.add_argument("--table", action="store_true", help="only write the table of the finished runs")
    args = parser.parse_args(argv)
    study = load_study(args.study_file)
    output = Path(args.output or Path("studies") / study.path.stem)
    if not args.table:
        run_study(study, output, dry_run=args.dry_run)
    if not args.dry_run:
        files = write_table(study, output)
        print("\n".join(f"{kind}: {path}" for kind, path in files.items()))


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv)


if __name__ == "__main__":
    main()
