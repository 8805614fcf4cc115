"""Checkpoints as safetensors + JSON only: nothing is ever unpickled.

Two kinds of file:

* trainable weights (:func:`save_trainable` / :func:`load_trainable`): every parameter with
  ``requires_grad`` (for LoRA that is exactly the adapter weights, for full fine-tuning the whole
  model; tied weights are stored once), plus the full ``state_dict`` of optional extra modules under
  ``extra.<name>.``. A JSON sidecar ``<file>.json`` lists names/shapes/dtypes and the run's identity
  (config hash, llm_path, tuning, lora_r); the same identity is also stored in the safetensors header
  so that file alone is self-describing.

  We key tensors by ``named_parameters`` names rather than peft's ``get_peft_model_state_dict``: the
  set is the same for a PeftModel (its trainable parameters are the adapters), but the names work for
  any wrapper module (e.g. a recommender holding the LLM and CETRec's temporal embedding), and loading
  can verify names and shapes strictly.

* training state (:func:`save_training_state` / :func:`load_training_state`): an arbitrary nested
  structure of dicts / lists / tuples / numbers / strings / None / tensors / numpy arrays, e.g.
  optimizer and scheduler ``state_dict()``, RNG states, epoch, step, early-stopping counters. It is
  flattened: every tensor (numpy arrays as raw bytes) becomes a safetensors entry ``t<i>`` and the
  structure becomes a JSON tree stored in the safetensors header under ``"tree"``, so one file is
  written atomically. JSON encoding: a dict whose keys are all strings is a JSON object; any other
  dict is ``{"__dict__": [[key, value], ...]}`` (optimizer states use int keys); a tuple is
  ``{"__tuple__": [...]}``; a tensor is ``{"__tensor__": "t<i>"}``; a numpy array is
  ``{"__ndarray__": "t<i>", "dtype": ..., "shape": [...]}``; floats round-trip exactly (repr).

All writes go through :func:`recbole_llm.utils.io.atomic_write` (temp file, fsync, ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from recbole_llm.utils.distributed import copy_into
from recbole_llm.utils.io import atomic_write, write_json_atomic

FORMAT_TRAINABLE = "recbole_llm.trainable"
FORMAT_STATE = "recbole_llm.training_state"
FORMAT_VERSION = 1
IDENTITY_KEYS = ("llm_path", "tuning", "lora_r", "lora_alpha", "lora_target_modules", "model")
_MARKERS = ("__dict__", "__tuple__", "__tensor__", "__ndarray__")


# --------------------------------------------------------------------------------------- file helpers
def _corrupt_error(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {path} is corrupt ({err}): delete it and rerun, or resume from the previous checkpoint"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check the path or train the model first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupt_error(path, err) from err
    return tensors, metadata


def config_hash(config: Mapping[str, Any] | None) -> str:
    """Stable short hash of a config's JSON-able items (others are stringified)."""
    if not config:
        return ""
    items = {str(k): config[k] for k in sorted(config, key=str)}
    blob = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _identity(config: Mapping[str, Any] | None) -> dict[str, str]:
    config = config or {}
    ident = {k: json.dumps(config[k], default=str) for k in IDENTITY_KEYS if k in config}
    ident["config_hash"] = config_hash(config)
    return ident


# --------------------------------------------------------------------------------------- trainable weights
def trainable_state(
    model: torch.nn.Module, extra_modules: Mapping[str, torch.nn.Module] | None = None
) -> dict[str, torch.Tensor]:
    """Tensors :func:`save_trainable` writes: ``requires_grad`` parameters + extra modules' state."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    for mod_name, module in (extra_modules or {}).items():
        for key, value in module.state_dict().items():
            state[f"extra.{mod_name}.{key}"] = value.detach()
    return state


TRAINABLE_FILE = "trainable.safetensors"


def trainable_file(path: str | Path) -> Path:
    """A ``.safetensors`` path (or an existing file) is used as is; anything else is a checkpoint folder
    holding ``trainable.safetensors`` (+ ``.json``), so a caller can add its own files beside them."""
    path = Path(path)
    return path if path.suffix == ".safetensors" or path.is_file() else path / TRAINABLE_FILE


def save_trainable(
    model: torch.nn.Module,
    path: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    extra_modules: Mapping[str, torch.nn.Module] | None = None,
) -> Path:
    """Save the trainable weights (see :func:`trainable_file` for ``path``) and a JSON sidecar."""
    path = trainable_file(path)
    state = {k: v.contiguous().cpu() for k, v in trainable_state(model, extra_modules).items()}
    if not state:
        raise ValueError("the model has no trainable parameters (requires_grad) to save")
    ident = _identity(config)
    metadata = {"format": FORMAT_TRAINABLE, "format_version": str(FORMAT_VERSION), **ident}
    sidecar = {
        "format": FORMAT_TRAINABLE,
        "format_version": FORMAT_VERSION,
        "identity": {k: v for k, v in ident.items()},
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        "n_parameters": int(sum(v.numel() for v in state.values())),
    }
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    write_json_atomic(sidecar_path(path), sidecar, indent=1, sort_keys=True, ensure_ascii=True)
    return path


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


@dataclass
class LoadResult:
    """What :func:`load_trainable` did (missing / unexpected names are only possible with strict=False)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _likely_keys(
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    saved: Mapping[str, str],
    config: Mapping[str, Any] | None,
) -> str:
    """Guess which config key makes the checkpoint and the model differ."""
    if config is not None:
        now = _identity(config)
        differing = [k for k in IDENTITY_KEYS if k in saved and k in now and saved[k] != now[k]]
        if differing:
            pairs = ", ".join(f"{k}: checkpoint {saved[k]} vs now {now[k]}" for k in differing)
            return f"These config keys differ from the run that wrote it: {pairs}."
    names = missing + unexpected + shapes
    hints = []
    if any("lora_" in n for n in missing) != any("lora_" in n for n in unexpected) or (
        any("lora_" in n for n in names) and not all("lora_" in n for n in names)
    ):
        hints.append("tuning (full vs lora) or lora_target_modules")
    if any("lora_" in n for n in shapes):
        hints.append("lora_r")
    if any("lora_" not in n and not n.startswith("extra.") for n in shapes):
        hints.append("llm_path (a different backbone)")
    if any(n.startswith("extra.") for n in names):
        hints.append("the model type or its extra-module settings")
    if not hints:
        hints.append("llm_path / tuning / lora_r")
    recorded = ", ".join(f"{k}={saved[k]}" for k in IDENTITY_KEYS if k in saved)
    return f"Likely differing config key(s): {'; '.join(hints)}." + (
        f" The checkpoint was written with {recorded}." if recorded else ""
    )


def load_trainable(
    model: torch.nn.Module,
    path: str | Path,
    strict: bool = True,
    *,
    config: Mapping[str, Any] | None = None,
    extra_modules: Mapping[str, torch.nn.Module] | None = None,
) -> LoadResult:
    """Copy a :func:`save_trainable` checkpoint into ``model`` (and ``extra_modules``) in place.

    Shapes must always match; with ``strict`` the names must match exactly too. Pass the current
    ``config`` to get the differing config keys named in the error.
    """
    path = trainable_file(path)
    tensors, metadata = _read_safetensors(path)
    if metadata.get("format") != FORMAT_TRAINABLE:
        raise ValueError(
            f"{path} is not a recbole_llm trainable-weights checkpoint (format={metadata.get('format')})"
        )
    targets = trainable_state(model, extra_modules)
    # Frozen parameters may be loaded too (e.g. a full-FT checkpoint into a model frozen for eval).
    for name, p in model.named_parameters():
        targets.setdefault(name, p.detach())
    expected = set(trainable_state(model, extra_modules))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    shapes = sorted(
        f"{n} (checkpoint {tuple(tensors[n].shape)} vs model {tuple(targets[n].shape)})"
        for n in set(tensors) & set(targets)
        if tensors[n].shape != targets[n].shape
    )
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
        if missing and strict:
            parts.append(
                f"{len(missing)} trainable tensor(s) missing from the checkpoint, e.g. {missing[:3]}"
            )
        if unexpected and strict:
            parts.append(f"{len(unexpected)} tensor(s) the model does not have, e.g. {unexpected[:3]}")
        shape_names = [s.split(" ", 1)[0] for s in shapes]
        raise ValueError(
            f"checkpoint {path} does not match the model: {'; '.join(parts)}. "
            + _likely_keys(missing, unexpected, shape_names, metadata, config)
        )
    loaded = []
    with torch.no_grad():
        for name in sorted(set(tensors) & set(targets)):
            copy_into(targets[name], tensors[name])  # a sharded (fsdp) parameter keeps its own shard
            loaded.append(name)
    return LoadResult(loaded=loaded, missing=missing, unexpected=unexpected)


# --------------------------------------------------------------------------------------- training state
def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str, seen: set[int]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensor = obj.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory; copy only then (optimizer states are large).
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        raw = np.ascontiguousarray(obj)
        tensors[key] = torch.from_numpy(raw.reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        keys = list(obj)
        for k in keys:
            if not (k is None or isinstance(k, bool | int | float | str)):
                raise TypeError(f"training state key {where}[{k!r}] has type {type(k).__name__}; use str/int")
        if all(isinstance(k, str) and k not in _MARKERS for k in keys):
            return {k: _encode(obj[k], tensors, f"{where}[{k!r}]", seen) for k in keys}
        return {"__dict__": [[k, _encode(obj[k], tensors, f"{where}[{k!r}]", seen)] for k in keys]}
    raise TypeError(
        f"training state value at {where} has type {type(obj).__name__}, which cannot be saved without "
        "pickle: convert it to tensors, numbers, strings, lists or dicts"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        raw = tensors[obj["__ndarray__"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {(tuple(k) if isinstance(k, list) else k): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_training_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically save a nested training state (see module docstring for the format)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(dict(state), tensors, "state", set())
    metadata = {"format": FORMAT_STATE, "format_version": str(FORMAT_VERSION), "tree": json.dumps(tree)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`save_training_state` (tensors come back on CPU)."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    if metadata.get("format") != FORMAT_STATE:
        raise ValueError(f"{path} is not a recbole_llm training-state file (format={metadata.get('format')})")
    try:
        tree = json.loads(metadata["tree"])
        return _decode(tree, tensors)
    except (KeyError, ValueError, TypeError) as err:
        raise _corrupt_error(path, err) from err


# --------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) CUDA RNG states, ready for save_training_state."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global RNG is what we restore)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (accepts what load_training_state returns)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])


def safe_torch_load(path: str | os.PathLike, map_location=None) -> dict:
    """Load a torch checkpoint without unpickling arbitrary objects, with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist: check the path or train the model first.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(
            f"Checkpoint {path} cannot be read safely ({type(err).__name__}: {err}). It is corrupt or was written by "
            "RecBole's own trainer (which pickles the config): retrain, or delete it and resume from an older one."
        ) from err
