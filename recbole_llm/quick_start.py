"""One entry point for every model: prepare data, train, evaluate with RecBole's metrics, save results.

Read top to bottom: :func:`load_run` builds everything a run needs (data, model, trainer);
:func:`run_recbole_llm` trains and tests one model (or resumes a run, or re-decodes one with
``evaluate``); :func:`objective_function` is the same run for RecBole's ``HyperTuning``;
:func:`load_trained` reloads a finished run for analysis code.
"""

from __future__ import annotations

import logging
import sys
import time
from logging import getLogger
from pathlib import Path
from typing import Any, NamedTuple

from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_llm.config import Config
from recbole_llm.data.dataset import SharedSplitDataset, check_dataset_files
from recbole_llm.data.prepare import is_prepared
from recbole_llm.ensemble import load_ensemble_model
from recbole_llm.model import GENERATIVE_MODELS, PLUGIN_MODELS, get_model
from recbole_llm.model.backbone import resolve_llm_path
from recbole_llm.model.decoding import decoding_keys
from recbole_llm.trainer import evaluation_trainer, get_trainer
from recbole_llm.utils.checkpoint import safe_torch_load
from recbole_llm.utils.distributed import (
    broadcast_from_main,
    is_main_process,
    main_process_first,
    single_process_only,
    start_processes,
)
from recbole_llm.utils.errors import UserError, UserFileError
from recbole_llm.utils.io import read_json
from recbole_llm.utils.rankings import RANKINGS_FILE, write_rankings
from recbole_llm.utils.results import jsonable, save_results, split_fingerprint
from recbole_llm.utils.runs import find_in_run, find_run, resolve_path


def create_dataset(config: Config) -> SharedSplitDataset:
    """Every sequential model reads the same prepared split (see :class:`SharedSplitDataset`)."""
    return SharedSplitDataset(config)


def set_cpu_threads(threads: Any) -> None:
    """``cpu_threads``: torch's intra-op threads. On a machine whose cores other jobs also use, 1 thread is
    4-17x faster than oversubscribed OpenMP threads (measured on 2 shared cores: SASRec 4.9 vs 0.3 it/s)."""
    if threads is None:
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"cpu_threads={threads!r} must be a positive integer (or ~ for torch's default).")
    import torch

    torch.set_num_threads(threads)


def load_run(config: Config, quiet: bool = False, with_trainer: bool = True):
    """Build dataset, dataloaders, model and trainer for ``config`` (shared by training, tuning and reload).

    ``with_trainer=False`` skips the trainer (and its ``accelerate`` state) for code that only reads the
    model, such as the zero-IG statistics.
    """
    set_cpu_threads(config["cpu_threads"])
    init_seed(config["seed"], config["reproducibility"])
    with main_process_first():  # several processes: rank 0 prepares a missing dataset, the others read it
        dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if config["model"] in PLUGIN_MODELS:  # rank 0 builds a missing SmolLM2 cache, the others then load it
        with main_process_first():
            resolve_llm_path(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset)
    if config["model"] not in GENERATIVE_MODELS:
        model = model.to(config["device"])
    if getattr(model, "decoding", None) is not None and model.decoding.uses_ensemble:
        model.set_ensemble_model(
            load_ensemble_model(model.decoding.ensemble_checkpoint, config, model.n_items)
        )  # missing / mismatched: raises
    trainer = get_trainer(config["model"])(config, model) if with_trainer else None
    if not quiet:
        getLogger().info(dataset)
    return dataset, (train_data, valid_data, test_data), model, trainer


def _requested(key: str, config_dict: dict[str, Any] | None) -> str | None:
    """The ``key`` value (``resume``, ``evaluate``) of ``config_dict`` or of a ``--key=...`` flag."""
    if config_dict and config_dict.get(key):
        return str(config_dict[key])
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1] or None
    return None


def recorded_overrides(info: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded overrides. A run made before ``sample_seed`` existed drew its sample subsets with its
    ``seed``: that seed keeps drawing them, so reading the run finds its own test samples again."""
    overrides = dict(info.get("overrides") or {})
    recorded = info.get("config") or {}
    if recorded and "sample_seed" not in recorded and "sample_seed" not in overrides:
        overrides["sample_seed"] = recorded.get("seed", 2020)
    return overrides


def resume_settings(
    resume: str | Path, model: str | None, dataset: str | None, config_dict: dict[str, Any] | None
) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """One-flag resume: model, dataset and the run's settings come from the run folder's ``run.json``.

    Settings given now (``config_dict``, ``--key=value``) still override the recorded ones. Folders
    without ``run.json`` (a baseline's ``.pth`` file) need ``--model`` / ``--dataset`` as before.
    """
    info_file = find_in_run(resume)
    if info_file is None:
        check_resume_target(resume)
        return model, dataset, config_dict
    info = read_json(info_file)
    for key, given in (("model", model), ("dataset", dataset)):
        if given is not None and given != info[key]:
            raise ValueError(
                f"--{key}={given} but the run in {info_file.parent} was trained with {key}={info[key]}: "
                f"drop --{key} (--resume reads it from run.json) or resume another run folder."
            )
    merged = {k: v for k, v in recorded_overrides(info).items() if k not in ("model", "dataset")}
    merged.update(_where_run_is_now(info, info_file.parent, info_file.parent / "best", config_dict))
    merged.update(config_dict or {})
    return info["model"], info["dataset"], merged


def check_resume_target(resume: str | Path) -> None:
    """A ``--resume`` target without ``run.json`` must be a baseline's checkpoint file or hold a training
    state (whose own checks then apply): a missing path or a folder that is no run used to end in "No model
    given: pass --model=SASRec"."""
    path = Path(resume)
    if not path.exists():
        raise UserFileError(
            f"--resume={resume}: {path} does not exist; pass a run folder under saved/ (it holds run.json)."
        )
    states = [path / "training_state", *path.glob("*/training_state")]  # last/, last.old/, last.tmp/
    if path.is_dir() and not any(state.is_file() for state in states):
        raise UserError(
            f"--resume={resume}: {path} holds no run.json, so it is not a run folder: pass a run folder "
            "under saved/ (it holds run.json), or a baseline's .pth checkpoint with --model and --dataset."
        )


def _where_run_is_now(
    info: dict[str, Any], anchor: Path, checkpoint: Path, given: dict[str, Any] | None
) -> dict[str, Any]:
    """``data_path``, ``checkpoint_dir`` (and ``results_dir``) of a run where it lies now, as overrides.

    The run's recorded settings name the folders of the working folder it was trained in; these point at
    the prepared data the run recorded and at the run's own folders, so reading, re-decoding or resuming
    a run from elsewhere (or after moving its results and ``saved/`` together) neither prepares a dataset
    nor creates ``saved/`` or ``results/`` in the working folder.
    """
    local: dict[str, Any] = {}
    data, tried = resolve_path(info, "data", anchor)
    if data is not None:
        local["data_path"] = str(data.parent.resolve())
    elif tried and not ((given or {}).get("data_path") or _requested("data_path", None)):
        raise FileNotFoundError(
            f"The prepared dataset {info.get('dataset')} of this run is not at {' or '.join(map(str, tried))}: "
            f"pass --data_path=<the folder that holds {info.get('dataset')}/> (or data_path in config_dict)."
        )
    # An existing folder, so the trainer creates none (RecBole's Trainer makes checkpoint_dir).
    local["checkpoint_dir"] = str(
        (checkpoint.parent.parent if checkpoint.is_dir() else checkpoint.parent).resolve()
    )
    found, _ = resolve_path(info, "results", anchor)
    if found is not None:
        local["results_dir"] = str(found.parent.resolve())
    elif anchor.name == info.get("dataset"):  # a results JSON in <results_dir>/<dataset>/
        local["results_dir"] = str(anchor.parent.resolve())
    return local


def _check_data(config: Config) -> None:
    """Refuse a run whose prepared data is missing instead of preparing a new copy where it is read."""
    if is_prepared(config["dataset"], Path(config["data_path"]).parent):  # the split protocol's own copy
        return
    raise FileNotFoundError(
        f"The prepared dataset {config['dataset']} of this run is not at {config['data_path']}: pass "
        f"--data_path=<the folder that holds {config['dataset']}/> (or data_path in config_dict)."
    )


def run_recbole_llm(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    saved: bool = True,
) -> dict[str, Any]:
    """Train and test one model on one dataset; return RecBole's result dict plus the results file path.

    ``resume`` (in ``config_dict`` or ``--resume=<run folder>``) continues an interrupted run exactly
    where its last checkpoint left it, with the settings recorded in the run folder.
    """
    evaluate = _requested("evaluate", config_dict)
    if evaluate:
        return evaluate_run(evaluate, model, dataset, config_file_list, config_dict)
    resume = _requested("resume", config_dict)
    if resume:
        model, dataset, config_dict = resume_settings(resume, model, dataset, config_dict)
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_files_early(config)
    _start_processes(config)
    logger = _start_logging(config)
    return _train_and_test(config, logger, saved=saved, verbose=True)


def check_files_early(config: Config) -> None:
    """A prepared dataset's files are checked before ``log/`` and ``saved/`` exist: a refused hand-written
    file leaves nothing behind (a dataset still to prepare is checked when it is loaded)."""
    if is_prepared(config["dataset"], Path(config["data_path"]).parent):
        check_dataset_files(config)


def _start_processes(config: Config) -> None:
    """Several processes (torchrun, accelerate launch): LLMGenRec joins the process group now (gloo on CPU,
    NCCL on GPUs), so rank 0 can prepare data and name folders for all; RecBole's baselines are refused."""
    if config["model"] not in GENERATIVE_MODELS:
        single_process_only(config["model"])
        return
    import torch

    start_processes(cpu=not (torch.cuda.is_available() and config["use_gpu"]))


def objective_function(config_dict=None, config_file_list=None, saved=True) -> dict[str, Any]:
    """RecBole ``HyperTuning`` objective: one quiet run, saved like any other run."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    return _train_and_test(config, logger, saved=saved, verbose=False)


def _train_and_test(config: Config, logger: logging.Logger, saved: bool, verbose: bool) -> dict[str, Any]:
    """Train (or continue ``resume``), test the best checkpoint, write the results JSON."""
    start = time.time()
    _, (train_data, valid_data, test_data), model_obj, trainer = load_run(config, quiet=not verbose)
    if verbose:
        logger.info(model_obj)
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"])
    progress = bool(config["show_progress"]) and verbose
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=verbose, saved=saved, show_progress=progress
    )
    train_seconds = time.time() - start
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=progress)
    if verbose:
        logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
        logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.time() - start, 2),
        **_test_identity(test_data),
        "checkpoint": getattr(trainer, "saved_model_file", None) if saved else None,
        "rankings": _save_rankings(trainer, test_data, _rankings_path(trainer)),
        **_hyper_parameters(model_obj),
    }
    return _save_and_report(config, logger, result, report=verbose)


def _rankings_path(trainer, evaluated: Path | None = None) -> Path:
    """Where a run's rankings go: ``<run folder>/rankings.jsonl`` for LLMGenRec, beside the checkpoint
    (``saved/<Model>-<time>.rankings.jsonl``) for RecBole's models. ``--evaluate`` of the checkpoint
    ``evaluated`` writes ``rankings-evaluate-<time>.jsonl`` in the run folder (LLMGenRec) or
    ``<Model>-<time>.evaluate-<time>.rankings.jsonl`` beside the ``.pth``: earlier rankings are kept."""
    if evaluated is None:
        if hasattr(trainer, "run_dir"):
            return Path(trainer.run_dir) / RANKINGS_FILE
        return Path(trainer.saved_model_file).with_suffix(".rankings.jsonl")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if evaluated.is_dir():  # an LLM run's best/ folder
        return evaluated.parent / f"rankings-evaluate-{stamp}.jsonl"
    return evaluated.with_suffix(f".evaluate-{stamp}.rankings.jsonl")


def _save_rankings(trainer, test_data, path: Path) -> str | None:
    """Write the test rankings the trainer just scored (rank 0 only, once); every rank gets the path."""
    rankings = getattr(trainer, "last_rankings", None)
    written = None
    if rankings is not None and is_main_process():
        written = str(write_rankings(path, test_data.dataset, rankings))
    return broadcast_from_main(written)


def _test_identity(test_data) -> dict[str, Any]:
    """How many test samples, and which (two results with the same fingerprint saw the same samples)."""
    return {
        "n_test_samples": len(test_data.dataset),
        "test_fingerprint": split_fingerprint(test_data.dataset),
    }


def _start_logging(config: Config) -> logging.Logger:
    """Seed, RecBole's logger, and the command line + config at the top of the log.

    Ranks other than 0 log errors to the console only (no ``log/`` file: one log per run).
    """
    init_seed(config["seed"], config["reproducibility"])
    if is_main_process():
        init_logger(config)
    else:
        _console_logging(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    return logger


def _save_and_report(
    config: Config, logger: logging.Logger, result: dict[str, Any], report: bool = True
) -> dict[str, Any]:
    """Write the results JSON (``run_recbole_llm.py`` then shows it next to earlier runs of its split).

    With several processes rank 0 writes the one JSON and every rank returns its path.
    """
    result["results_file"] = broadcast_from_main(
        str(save_results(config, result)) if is_main_process() else None
    )
    if report:
        logger.info(set_color("results saved to", "yellow") + f": {result['results_file']}")
    return result


def _hyper_parameters(model) -> dict[str, Any]:
    """``{"hyper_parameters": ...}`` for models that resolve defaults (LLMGenRec), else nothing."""
    return {"hyper_parameters": model.hyper_parameters()} if hasattr(model, "hyper_parameters") else {}


def _find_run(path: str | Path) -> tuple[dict[str, Any], Path, Path]:
    """A results JSON's (or run folder's ``run.json``) info, its checkpoint, and the folder holding the info."""
    info, info_file = find_run(path)
    path = Path(path)
    if path.is_dir():
        if info_file is None:
            raise FileNotFoundError(
                f"{path} holds no run.json: pass a results JSON or a run folder under saved/."
            )
        anchor, checkpoint = info_file.parent, info_file.parent / "best"
    else:
        if not info.get("checkpoint"):
            raise ValueError(
                f"{path} records no checkpoint (the run used saved=False): retrain with saving on."
            )
        anchor = path.parent
        found, tried = resolve_path(info, "checkpoint", anchor)
        if found is None:
            raise FileNotFoundError(
                f"{path} records its checkpoint at {' or '.join(map(str, tried))}, and none exists: move the "
                "results and saved/ folders together (the paths are relative to each other), or pass the run "
                "folder under saved/ instead."
            )
        checkpoint = found.resolve()
    return info, checkpoint, anchor


def _run_config(
    info: dict[str, Any], local: dict[str, Any], config_dict: dict[str, Any] | None, **kwargs
) -> Config:
    """The run's recorded overrides, then where its folders are now, then the settings given now."""
    overrides = recorded_overrides(info)
    overrides.update(local)
    overrides.update(config_dict or {})
    overrides.pop("resume", None)
    config = Config(model=info["model"], dataset=info["dataset"], config_dict=overrides, **kwargs)
    _check_data(config)
    return config


def _console_logging(config: Config) -> None:
    """RecBole's log level on the console only: reading a run writes no ``log/`` file."""
    state = str(config["state"] or "INFO").upper()
    logger = getLogger()
    logger.setLevel(getattr(logging, state, logging.INFO))
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())


class Trained(NamedTuple):
    """A finished run, reloaded: config, model with its best weights, and the shared-split dataloaders."""

    config: Config
    model: Any
    train_data: Any
    valid_data: Any
    test_data: Any


def load_trained(path: str | Path, config_dict: dict[str, Any] | None = None) -> Trained:
    """Reload a finished run from its results JSON or run folder, without retraining.

    Works from any working folder and creates nothing: no trainer, no log file, no dataset preparation.
    """
    info, checkpoint, anchor = _find_run(path)
    local = _where_run_is_now(info, anchor, checkpoint, config_dict)  # analyses write beside its results
    config = _run_config(info, local, config_dict)
    _console_logging(config)
    _, (train_data, valid_data, test_data), model, _ = load_run(config, quiet=True, with_trainer=False)
    _load_weights(model, checkpoint, config)
    return Trained(config, model, train_data, valid_data, test_data)


def load_run_dataset(path: str | Path) -> tuple[Config, SharedSplitDataset]:
    """The config and prepared dataset of a finished run (results JSON or run folder), without its model
    or checkpoint: what the beyond-accuracy metrics of its saved rankings need (catalogue, training counts)."""
    info, info_file = find_run(path)
    path = Path(path)
    anchor = info_file.parent if info_file is not None else path.parent
    local = _where_run_is_now(info, anchor, anchor / "best", None)
    config = _run_config(info, local, None)
    _console_logging(config)
    with main_process_first():
        return config, create_dataset(config)


def _load_weights(model, checkpoint: Path, config: Config) -> None:
    if hasattr(model, "load_checkpoint"):
        model.load_checkpoint(checkpoint)
    else:
        model.load_state_dict(safe_torch_load(checkpoint, map_location=config["device"])["state_dict"])
    model.eval()


# What ``evaluate`` may change on a trained run besides the decoding keys (``decoding_keys()``): how it is
# scored, and where and how fast it runs. Any other key would describe a model that was never trained.
EVALUATION_KEYS = frozenset(
    {
        "topk",
        "metrics",
        "exclude_history",
        "eval_batch_size",
        "eval_sample_num",
        "mixed_precision",
        "cpu_threads",
        "show_progress",
        "state",
        "results_dir",
        "checkpoint_dir",
        "use_gpu",
        "gpu_id",
        "device",
        "worker",
        "evaluate",
        "data_path",
    }
)


def evaluate_run(
    path: str | Path,
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decode and score a finished run's best checkpoint again, with other decoding keys; no training.

    The papers compare decoders on one trained model (D3 vs constrained beam search, IGD's α, the D3
    ensemble); retraining for each row would cost hours of LLM time. Settings given now override the
    recorded ones, but only the decoding keys (:func:`decoding_keys`, registered scorers' included) and
    :data:`EVALUATION_KEYS` may differ: anything else would change the model.
    The result is saved as a new results JSON (``evaluated_from`` names the run).
    """
    info, checkpoint, anchor = _find_run(path)
    for key, given in (("model", model), ("dataset", dataset)):
        if given is not None and given != info[key]:
            raise ValueError(
                f"--{key}={given} but {path} was trained with {key}={info[key]}: drop --{key} "
                "(--evaluate reads it from the run) or evaluate another run."
            )
    given = dict(config_dict or {})
    given["evaluate"] = str(path)
    local = _where_run_is_now(info, anchor, checkpoint, given)  # results go beside the evaluated run's
    config = _run_config(info, local, given, config_file_list=config_file_list)
    recorded = info.get("config") or info.get("overrides") or {}
    allowed = EVALUATION_KEYS | set(decoding_keys())
    changed = sorted(
        key
        for key in config.external_config_dict
        if key not in allowed and key in recorded and jsonable(config[key]) != recorded[key]
    )
    if changed:
        raise ValueError(
            f"--evaluate only re-decodes a trained model, but {', '.join(changed)} would change the model "
            f"itself (trained with {', '.join(f'{k}={recorded[k]!r}' for k in changed)}): train a new run "
            f"for that, or change only decoding keys ({', '.join(sorted(allowed - {'evaluate'}))})."
        )
    _start_processes(config)
    _console_logging(config)  # the results JSON is this command's record: no log/ file
    logger = getLogger()
    start = time.time()
    _, (_, _, test_data), model_obj, _ = load_run(config, quiet=True, with_trainer=False)
    trainer = evaluation_trainer(config, model_obj)
    _load_weights(model_obj, checkpoint, config)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "model": config["model"],
        "evaluated_from": str(path),
        "best_valid_score": info.get("best_valid_score"),
        "valid_score_bigger": info.get("valid_score_bigger"),
        "best_valid_result": info.get("best_valid_result"),
        "test_result": test_result,
        "train_seconds": info.get("train_seconds"),
        "eval_seconds": round(time.time() - start, 2),
        **_test_identity(test_data),
        "checkpoint": str(checkpoint),
        "rankings": _save_rankings(trainer, test_data, _rankings_path(trainer, checkpoint)),
        **_hyper_parameters(model_obj),
    }
    return _save_and_report(config, logger, result)
