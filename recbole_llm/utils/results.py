"""Results files: one JSON per run, so runs can be compared across models, objectives and machines."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recbole_llm.utils.io import write_json_atomic
from recbole_llm.utils.runs import record_path

# Config keys that describe the machine or RecBole internals rather than the experiment.
_SKIP_KEYS = {
    "device",
    "config_file_list",
    "local_rank",
    "world_size",
    "single_spec",
    "ip",
    "port",
    "nproc",
    "offset",
}


def jsonable(value: Any) -> Any:
    """Convert config values (enums, tensors, tuples, paths) into plain JSON values."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def config_snapshot(config) -> dict[str, Any]:
    """The experiment's settings from a RecBole config, as plain JSON."""
    return {k: jsonable(v) for k, v in sorted(config.final_config_dict.items()) if k not in _SKIP_KEYS}


def split_fingerprint(dataset) -> str:
    """A short hash of the (user, history, target) samples of a split: equal hashes = same samples."""
    inter = dataset.inter_feat
    digest = hashlib.sha1()
    for field in (dataset.uid_field, dataset.iid_field + dataset.config["LIST_SUFFIX"], dataset.iid_field):
        digest.update(inter[field].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_name(config) -> str:
    """``SASRec`` for baselines, ``LLMGenRec-igd-d3`` for the LLM (objective and decoder matter)."""
    name = config["model"]
    if config["objective"] and name == "LLMGenRec":
        name += f"-{config['objective']}-{config['decoder']}"
        if config["zero_shot"]:
            name += "-zeroshot"
    return name


def save_results(config, result: Mapping[str, Any]) -> Path:
    """Write ``<results_dir>/<dataset>/<run>-<time>.json`` atomically and return its path."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    out_dir = Path(config["results_dir"] or "results") / config["dataset"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{run_name(config)}-{stamp}.json"
    result = dict(result)
    # Paths relative to this file and absolute (utils/runs.py): the run reloads from any folder, or moved.
    paths = {"data": record_path(config["data_path"], out_dir)}
    if result.get("checkpoint"):
        paths["checkpoint"] = record_path(result["checkpoint"], out_dir)
        result["checkpoint"] = paths["checkpoint"]["absolute"]
    if result.get("rankings"):  # the per-sample rankings file (utils/rankings.py)
        paths["rankings"] = record_path(result["rankings"], out_dir)
        result["rankings"] = paths["rankings"]["absolute"]
    payload = {
        "run": run_name(config),
        "model": config["model"],
        "dataset": config["dataset"],
        "objective": config["objective"] if config["model"] == "LLMGenRec" else None,
        "decoder": config["decoder"] if config["model"] == "LLMGenRec" else None,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        **{k: jsonable(v) for k, v in result.items()},
        "paths": paths,
        "config": config_snapshot(config),
        "overrides": {k: jsonable(v) for k, v in config.external_config_dict.items() if k not in _SKIP_KEYS},
    }
    write_json_atomic(path, payload, ensure_ascii=True)
    return path
