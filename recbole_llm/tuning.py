"""Hyper-parameter tuning of any model with RecBole's own ``HyperTuning`` (hyperopt): ``run_hyper.py``.

Each trial is one full run (:func:`recbole_llm.quick_start.objective_function`) whose results JSON is
saved as usual. The best trial has the best validation score in RecBole's direction: larger for a
metric such as NDCG@10, smaller for ``valid_metric: loss``. Selecting LLMGenRec trials on the
validation loss only works for keys that leave the loss's meaning alone: decoding keys
(:data:`~recbole_llm.model.decoding.settings.DECODING_KEYS`) never change it (refused), and token-weight
keys (``beta``, ``beta_prime``) change its scale (warned).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from recbole.trainer.hyper_tuning import HyperTuning

from recbole_llm import quick_start
from recbole_llm.config import Config, properties_dir
from recbole_llm.model.decoding import decoding_keys
from recbole_llm.model.objectives import loss_weight_keys

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")


def resolve_params_file(path: str | Path) -> Path:
    """``path`` itself, or for ``properties/hyper/<name>`` the packaged copy, so the README's commands
    also work for a pip-installed package run from any folder."""
    path = Path(path)
    if path.is_file():
        return path
    packaged = properties_dir() / "hyper" / path.name
    if path.parent.as_posix().endswith("properties/hyper") and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"Params file {path} does not exist: see {properties_dir() / 'hyper'}/*.hyper for examples."
    )


def parse_params_file(path: str | Path) -> dict[str, tuple[str, Any]]:
    """``{name: (type, values)}`` from a RecBole params file, without ``eval`` (RecBole uses ``eval``).

    Ranges may be written ``a,b`` (RecBole) or ``a b``; choices are Python literals.
    """
    path = resolve_params_file(path)
    params: dict[str, tuple[str, Any]] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        where = f"{path}:{lineno}"
        if len(parts) < 3:
            raise ValueError(
                f"{where}: expected `name type values` (e.g. `lambda choice [0.01, 0.1]`), got {raw!r}."
            )
        name, kind, text = parts
        if kind not in PARAM_TYPES:
            raise ValueError(f"{where}: unknown type {kind!r}; use one of {', '.join(PARAM_TYPES)}.")
        if name in params:
            raise ValueError(f"{where}: {name} is defined twice.")
        if kind == "choice":
            try:
                values = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise ValueError(
                    f"{where}: choices must be a Python list literal such as [0.1, 0.2] ({err})."
                ) from None
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: choices must be a non-empty list, got {text!r}.")
            params[name] = (kind, values)
            continue
        try:
            numbers = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{where}: {kind} needs numbers, got {text!r}.") from None
        expected = 3 if kind == "quniform" else 2
        if len(numbers) != expected:
            raise ValueError(
                f"{where}: {kind} needs {expected} numbers (low high{' q' if expected == 3 else ''})."
            )
        if numbers[0] >= numbers[1]:
            raise ValueError(f"{where}: low ({numbers[0]}) must be below high ({numbers[1]}).")
        params[name] = (kind, numbers)
    if not params:
        raise ValueError(f"{path} defines no parameter: add lines such as `lambda choice [0.01, 0.1]`.")
    return params


def build_space(params: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """hyperopt search space, exactly as RecBole's ``HyperTuning._build_space_from_file`` builds it."""
    from hyperopt import hp

    space = {}
    for name, (kind, values) in params.items():
        if kind == "choice":
            space[name] = hp.choice(name, values)
        elif kind == "uniform":
            space[name] = hp.uniform(name, values[0], values[1])
        elif kind == "quniform":
            space[name] = hp.quniform(name, values[0], values[1], values[2])
        else:
            space[name] = hp.loguniform(name, values[0], values[1])
    return space


def _plain(value: Any, whole: bool = False) -> Any:
    """hyperopt hands numpy scalars; configs and JSON want Python numbers (``whole``: quniform's 64.0 -> 64)."""
    if hasattr(value, "item"):
        value = value.item()
    if whole and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class TrialRecorder:
    """RecBole objective wrapper: adds the fixed settings and records every trial for the table."""

    def __init__(self, objective, fixed: dict[str, Any], params: dict[str, tuple[str, Any]]):
        self.objective = objective
        self.fixed = fixed
        self.param_names = list(params)
        self._whole = {name for name, (kind, _) in params.items() if kind == "quniform"}
        self.records: list[dict[str, Any]] = []

    def __call__(self, config_dict=None, config_file_list=None, saved=True):
        params = {k: _plain(v, k in self._whole) for k, v in (config_dict or {}).items()}
        start = time.time()
        result = self.objective({**self.fixed, **params}, config_file_list, saved)
        record = {"trial": len(self.records) + 1, **{k: params.get(k) for k in self.param_names}}
        record.update(
            {
                "best_valid_score": _plain(result["best_valid_score"]),
                "valid_score_bigger": bool(result["valid_score_bigger"]),
            }
        )
        for key, value in (result.get("best_valid_result") or {}).items():
            record[f"valid_{key}"] = _plain(value)
        for key, value in (result.get("test_result") or {}).items():
            record[f"test_{key}"] = _plain(value)
        record["seconds"] = round(time.time() - start, 1)
        record["results_file"] = result.get("results_file")
        self.records.append(record)
        return result


def best_trial(records: list[dict[str, Any]]) -> int | None:
    """Index of the best trial by validation score, in RecBole's direction (first one wins ties)."""
    best = None
    for i, record in enumerate(records):
        score = record["best_valid_score"]
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        if best is None:
            best = i
            continue
        current = records[best]["best_valid_score"]
        better = score > current if record["valid_score_bigger"] else score < current
        if better:
            best = i
    return best


def write_trials(records: list[dict[str, Any]], output: Path, valid_metric: str) -> dict[str, Path]:
    """``hyper_trials.csv`` and ``hyper_trials.md`` (best trial marked)."""
    output.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(records)
    best = best_trial(records)
    frame.insert(1, "best", ["*" if i == best else "" for i in range(len(frame))])
    frame = frame.rename(columns={"best_valid_score": f"valid_score ({valid_metric})"})
    files = {"csv": output / "hyper_trials.csv", "md": output / "hyper_trials.md"}
    frame.to_csv(files["csv"], index=False)
    direction = "lower" if records and not records[0]["valid_score_bigger"] else "higher"
    shown = frame.drop(columns=["valid_score_bigger"]).copy()
    if "results_file" in shown:
        shown["results_file"] = shown["results_file"].map(lambda p: Path(p).name if isinstance(p, str) else p)
    header = f"Selection: best validation {valid_metric} ({direction} is better), marked *.\n\n"
    files["md"].write_text(header + _markdown(shown) + "\n")
    return files


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def check_selection(model: str, valid_metric: str, params: dict[str, tuple[str, Any]]) -> None:
    """Refuse a search the validation loss cannot decide; warn when it would compare different scales."""
    if model != "LLMGenRec" or valid_metric.lower() != "loss":
        return
    decoding = sorted(set(decoding_keys()) & set(params))
    if decoding:
        raise ValueError(
            f"{', '.join(decoding)} only change decoding, so every trial has the same validation loss and "
            "selection would be arbitrary: add --valid_metric=NDCG@10 --valid_metric_bigger=True "
            "(decodes the validation samples; --eval_sample_num keeps that affordable)."
        )
    # Keys that re-weight the validation loss's tokens: losses under different values are not comparable.
    weights = sorted((loss_weight_keys() | {"objective"}) & set(params))
    if weights:
        print(
            f"WARNING: {', '.join(weights)} re-weight the tokens of the validation loss, so trials with "
            "different values report losses on different scales; prefer --valid_metric=NDCG@10 "
            "--valid_metric_bigger=True to select among them.",
            file=sys.stderr,
        )


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """``run_hyper.py``'s options; every other ``--key=value`` is a fixed override (see :func:`tune`)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", "-m", required=True, help="LLMGenRec, SASRec, GRU4Rec, Caser, ...")
    parser.add_argument("--dataset", "-d", required=True, help="a prepared dataset name")
    parser.add_argument("--params_file", required=True, help="RecBole params file (properties/hyper/*.hyper)")
    parser.add_argument(
        "--config_files", default=None, help="space-separated YAML files fixed for every trial"
    )
    parser.add_argument("--algo", choices=("exhaustive", "random", "bayes"), default="exhaustive")
    parser.add_argument(
        "--max_evals", type=int, default=20, help="trials for random/bayes (exhaustive: the grid)"
    )
    parser.add_argument(
        "--early_stop", type=int, default=None, help="stop after N trials without improvement"
    )
    parser.add_argument(
        "--output", default=None, help="folder for the trial table (default results/<dataset>/hyper/...)"
    )
    return parser


def tune(
    model: str,
    dataset: str,
    params_file: str | Path,
    fixed_args: Sequence[str] = (),
    config_files: Sequence[str] | None = None,
    algo: str = "exhaustive",
    max_evals: int = 20,
    early_stop: int | None = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Run RecBole's ``HyperTuning`` over ``params_file`` and write the trial table; return the best trial.

    ``fixed_args`` are the ``--key=value`` overrides fixed for every trial; RecBole's ``Config`` reads
    them from ``sys.argv``, so the caller leaves them there (``run_hyper.py`` does). Returns ``best``
    (its record), ``records``, ``output`` and ``recbole_best_params``.
    """
    params = parse_params_file(params_file)
    overrides = {a[2:].split("=", 1)[0] for a in fixed_args if a.startswith("--") and "=" in a}
    clash = sorted(overrides & set(params))
    if clash:
        raise ValueError(
            f"{', '.join(clash)} is both searched ({params_file}) and fixed on the command line; "
            "command-line values override every trial, so remove one of them."
        )
    if algo == "exhaustive":
        continuous = [n for n, (kind, _) in params.items() if kind != "choice"]
        if continuous:
            raise ValueError(
                f"--algo=exhaustive enumerates `choice` grids only, but {', '.join(continuous)} are ranges: "
                "use --algo=random or --algo=bayes, or turn them into choices."
            )
    config_files = list(config_files) if config_files else None
    fixed: dict[str, Any] = {"model": model, "dataset": dataset}
    probe = Config(model=model, dataset=dataset, config_file_list=config_files)
    quick_start.check_files_early(probe)  # a refused hand-written file leaves no log/ or trial behind
    unknown = [n for n in params if n not in probe.final_config_dict]
    if unknown:
        print(
            f"WARNING: {', '.join(unknown)} is not a known setting of {model}; check the spelling "
            "(an unread key makes every trial identical).",
            file=sys.stderr,
        )
    valid_metric = str(probe["valid_metric"])
    if valid_metric.lower() == "loss" and probe["valid_metric_bigger"]:
        raise ValueError(
            "valid_metric is loss but valid_metric_bigger is True: set --valid_metric_bigger=False."
        )
    check_selection(model, valid_metric, params)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    output = (
        Path(output)
        if output
        else Path(probe["results_dir"] or "results") / dataset / "hyper" / f"{model}-{stamp}"
    )

    recorder = TrialRecorder(quick_start.objective_function, fixed, params)
    tuner = HyperTuning(
        recorder,
        space=build_space(params),
        fixed_config_file_list=config_files,
        algo=algo,
        max_evals=max_evals,
        early_stop=early_stop or 10**9,
    )
    try:
        tuner.run()
    finally:
        if recorder.records:
            files = write_trials(recorder.records, output, valid_metric)
            tuner.export_result(output_file=str(output / "hyper_result.txt"))
            for name, path in files.items():
                print(f"wrote {name}: {path}")
    best = best_trial(recorder.records)
    if best is None:
        raise RuntimeError("No trial finished with a validation score: check the logs under log/.")
    record = recorder.records[best]
    recbole_best = {k: _plain(v) for k, v in (tuner.best_params or {}).items()}
    if recbole_best != {k: record[k] for k in params}:
        print(f"note: RecBole's HyperTuning tracked {recbole_best} as best (it treats a 0.0 score as unset).")
    print(f"best params: { {k: record[k] for k in params} }")
    print(f"best valid {valid_metric}: {record['best_valid_score']}")
    print(f"test result: { {k[5:]: v for k, v in record.items() if k.startswith('test_')} }")
    return {
        "best": record,
        "records": recorder.records,
        "output": output,
        "recbole_best_params": recbole_best,
    }
