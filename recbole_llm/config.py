"""RecBole ``Config`` that knows the plugin's models and YAML files (the RecBole-GNN pattern).

Resolution order (lowest to highest priority), as in RecBole:
recbole's own defaults < ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` <
``properties/dataset/<dataset>.yaml`` < ``--config_files`` < ``config_dict`` < ``--key=value``.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import argument_list

from recbole_llm.data.prepare import split_data_root
from recbole_llm.data.protocol import check_split_protocol
from recbole_llm.model import get_model
from recbole_llm.model.decoding.scorers import scorer_keys
from recbole_llm.model.objectives import OBJECTIVES
from recbole_llm.utils.config_access import TRAINER_FLAGS, check_exclude_history, check_flag, parse_value
from recbole_llm.utils.distributed import is_main_process
from recbole_llm.utils.errors import UserError, UserFileError

_PACKAGE = Path(__file__).resolve().parent


def properties_dir() -> Path:
    """The folder of default YAML files: ``$RECBOLE_LLM_PROPERTIES``, else the installed wheel's copy
    (``recbole_llm/properties``), else the checkout's top-level ``properties/`` (editable installs).

    Without one, every plugin default (objective, llm_path, num_beams, ...) would silently be ``None``.
    """
    override = os.environ.get("RECBOLE_LLM_PROPERTIES")
    candidates = [Path(override)] if override else [_PACKAGE / "properties", _PACKAGE.parent / "properties"]
    for folder in candidates:
        if (folder / "overall.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"No default YAML files (overall.yaml) in {' or '.join(map(str, candidates))}: "
        + (
            "point RECBOLE_LLM_PROPERTIES at a folder laid out like the repository's properties/."
            if override
            else "reinstall recbole-llm, whose wheel carries them, or run from a checkout."
        )
    )


class _SafeFloatLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (RecBole's FullLoader trick, without FullLoader)."""


_SafeFloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


_RECBOLE_PROPERTIES = Path(recbole.__file__).resolve().parent / "properties"

# Keys no YAML file defaults but that RecBole's Config sets or reads (configurator.py), this plugin's
# Config and drivers set (``data_root``, ``config_files``, ``resume``, ...), or that tell the check which
# extra keys are deliberate (``extra_keys``).
SET_BY_CONFIG = frozenset(
    {
        *argument_list.general_arguments,
        *argument_list.training_arguments,
        *argument_list.evaluation_arguments,
        *argument_list.dataset_arguments,
        *("MODEL_INPUT_TYPE", "MODEL_TYPE", "eval_type", "device", "gpu_id", "local_rank", "nproc"),
        *("world_size", "offset", "ip", "port", "single_spec", "verbose", "repeatable", "neg_sampling"),
        *("train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args", "additional_feat_suffix"),
        *("model", "dataset", "config_files", "data_root", "resume", "evaluate", "extra_keys"),
    }
)

# Keys that must be positive integers (``~`` allowed where the key says "~ = all / off").
POSITIVE_INT_KEYS = {
    "epochs": False,
    "train_batch_size": False,
    "eval_batch_size": False,
    "stopping_step": False,
    "MAX_ITEM_LIST_LENGTH": False,
    "micro_batch_size": True,
    "decode_batch_size": True,
    "num_beams": True,
    "checkpoint_steps": True,
    "train_sample_num": True,
    "eval_sample_num": True,
    "eval_step": True,
}


def yaml_file_keys(file: Path) -> frozenset[str]:
    """The top-level keys of one of RecBole's or this plugin's own YAML files (none when it is absent)."""
    return frozenset(_cached_yaml_keys(str(file)))


@cache
def _cached_yaml_keys(file: str) -> tuple[str, ...]:
    path = Path(file)
    if not path.is_file():
        return ()
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeFloatLoader)
    return tuple(loaded) if isinstance(loaded, dict) else ()


def _folder_keys(folder: Path) -> frozenset[str]:
    return frozenset(k for file in sorted(folder.glob("*.yaml")) for k in yaml_file_keys(file))


def model_keys(model: str) -> frozenset[str]:
    """The keys of ``model`` (RecBole's ``model/<model>.yaml``, this plugin's, and for LLMGenRec every
    registered scorer's and objective's keys, so one added at run time brings its keys)."""
    keys = yaml_file_keys(_RECBOLE_PROPERTIES / "model" / f"{model}.yaml") | yaml_file_keys(
        properties_dir() / "model" / f"{model}.yaml"
    )
    if model == "LLMGenRec":
        keys |= scorer_keys() | {key for cls in OBJECTIVES.values() for key in cls.keys}
    return keys


def known_keys(model: str) -> frozenset[str]:
    """Every key a run of ``model`` reads: RecBole's (overall, dataset and quick-start YAML files and the
    keys its Config sets), this plugin's overall and dataset files, and the model's own keys."""
    recbole_common = (
        yaml_file_keys(_RECBOLE_PROPERTIES / "overall.yaml")
        | _folder_keys(_RECBOLE_PROPERTIES / "dataset")
        | _folder_keys(_RECBOLE_PROPERTIES / "quick_start_config")
    )
    plugin = yaml_file_keys(properties_dir() / "overall.yaml") | _folder_keys(properties_dir() / "dataset")
    return SET_BY_CONFIG | recbole_common | plugin | model_keys(model)


def _models_with_key(key: str) -> list[str]:
    """The models (RecBole's and this plugin's) whose own YAML file defines ``key``."""
    files = [*_RECBOLE_PROPERTIES.glob("model/*.yaml"), *properties_dir().glob("model/*.yaml")]
    return sorted({file.stem for file in files if key in yaml_file_keys(file)})


def unknown_key_message(key: str, where: str, known: Iterable[str], model: str) -> str:
    """One line: which key, where it came from, the closest known keys, and the escape hatch."""
    owners = _models_with_key(key)
    if owners:
        hint = f"it is a key of {', '.join(owners)}, not of {model}"
    else:
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no known key is close"
    return (
        f"Unknown key '{key}' {where} for model {model}: {hint} (an unknown key would be silently "
        f"ignored; if '{key}' is yours on purpose, add extra_keys: [{key}])."
    )


def as_key_list(value: Any, key: str = "extra_keys") -> list[str]:
    """``extra_keys`` as a list of names (one name alone is accepted)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UserError(f"{key}={value!r} must be a list of key names, e.g. extra_keys: [my_key].")


def check_known_keys(sources: Mapping[str, Mapping[str, Any]], known: Iterable[str], model: str) -> None:
    """Refuse any given key that no part of the run reads (a typo would otherwise be silently ignored).

    ``sources`` maps where the keys came from ("in my.yaml", "in config_dict", "on the command line")
    to the keys given there; ``extra_keys`` in any of them lists deliberate extra keys.
    """
    known = frozenset(known)
    extra = {k for given in sources.values() for k in as_key_list(given.get("extra_keys"))}
    for where, given in sources.items():
        for key in given:
            if key not in known and key not in extra:
                raise UserError(unknown_key_message(key, where, known, model))


def as_list_like_default(value: Any, default: Any) -> Any:
    """One value for a list-valued key is a one-element list (``--lora_target_modules=q_proj`` is
    ``[q_proj]``, never the letters of ``q_proj``)."""
    if isinstance(default, list) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    return value


def check_positive_int(key: str, value: Any, optional: bool) -> None:
    """``epochs``, batch sizes, ...: an integer >= 1 (``~`` too where ``optional``), named when not."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        also = " (or ~)" if optional else ""
        raise UserError(f"{key}={value!r} must be an integer >= 1{also}.")


def check_learning_rate(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"learning_rate={value!r} must be a number > 0 (e.g. 1e-4).")


def split_cmd_args(args: list[str]) -> tuple[list[str], list[str]]:
    """``--key value`` as ``--key=value`` (argparse's space form, accepted like the ``=`` form), and the
    arguments that are neither: RecBole reads only ``--key=value`` and used to drop the others silently."""
    joined, stray = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" not in arg and len(arg) > 2:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                joined.append(f"{arg}={args[i + 1]}")
                i += 2
                continue
            stray.append(arg)
        elif arg.startswith("--") and "=" in arg:
            joined.append(arg)
        else:
            stray.append(arg)
        i += 1
    return joined, stray


@contextmanager
def command_line_ignored() -> Iterator[None]:
    """Configs built inside read no ``--key=value`` from ``sys.argv`` (RecBole's Config reads it itself): for
    commands with their own options (recommend, analysis, benchmarks), which are no run's keys."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def _under_pytest(argv0: str) -> bool:
    """pytest's own options are in ``sys.argv``; like RecBole's ipykernel check, they are no run's keys."""
    return "pytest" in Path(argv0).parts or Path(argv0).name in ("pytest", "py.test")


class Config(RecBoleConfig):
    """RecBole config that finds ``LLMGenRec`` and the plugin's ``properties/`` files.

    Also hardens RecBole: YAML is read with a safe loader and command-line values are parsed with
    ``ast.literal_eval`` instead of ``eval``.
    """

    def _build_yaml_loader(self):
        return _SafeFloatLoader

    def _load_config_files(self, file_list):
        """RecBole's, but each file is named when it is missing, empty or not YAML, and every key
        remembers its file (for the unknown-key check)."""
        merged: dict[str, Any] = {}
        self._file_keys: dict[str, dict[str, Any]] = {}
        for file in file_list or []:
            merged.update(self._read_config_file(file))
        return merged

    def _read_config_file(self, file: str) -> dict[str, Any]:
        path = Path(file)
        if not path.is_file():
            raise UserFileError(f"config file {file} does not exist (--config_files / config_file_list).")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=self.yaml_loader)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"config file {file} is not valid YAML{line}: {problem}.") from None
        except UnicodeDecodeError:
            raise UserError(f"config file {file} is not UTF-8 text.") from None
        if loaded is None:
            raise UserError(f"config file {file} is empty: give key: value lines, or drop the file.")
        if not isinstance(loaded, dict):
            raise UserError(f"config file {file} must hold key: value lines, not a {type(loaded).__name__}.")
        self._file_keys[f"in {file}"] = loaded
        return loaded

    def _load_cmd_line(self):
        """RecBole's ``--key=value`` reading, plus the space form ``--key value``; any other argument is
        refused instead of being dropped with a warning."""
        if "ipykernel_launcher" in sys.argv[0] or _under_pytest(sys.argv[0]):
            return {}
        joined, stray = split_cmd_args(sys.argv[1:])
        if stray:
            raise UserError(
                f"unexpected argument {stray[0]!r}: give settings as --key=value (or --key value)."
            )
        given: dict[str, str] = {}
        for arg in joined:
            key, value = arg[2:].split("=", 1)
            if key in given and given[key] != value:
                raise UserError(f"--{key} is given twice, with {given[key]!r} and {value!r}: keep one.")
            given[key] = value
        return self._convert_config_dict(given)

    def _get_final_config_dict(self):
        """Refuse unknown keys, then make one value of a list-valued key a list (before RecBole merges)."""
        sources = {
            **getattr(self, "_file_keys", {}),
            "in config_dict": self.variable_config_dict,
            "on the command line": self.cmd_config_dict,
        }
        check_known_keys(sources, known_keys(self.model) | set(self.internal_config_dict), self.model)
        for key, value in self.external_config_dict.items():
            self.external_config_dict[key] = as_list_like_default(value, self.internal_config_dict.get(key))
        return super()._get_final_config_dict()

    def _convert_config_dict(self, config_dict: dict) -> dict:
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = parse_value(value)
        return config_dict

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise UserError("No model given: pass --model=SASRec (or LLMGenRec, GRU4Rec, Caser, ...).")
        if isinstance(model, str):
            model_name, model_class = model, get_model(model)
        else:
            model_name, model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise UserError(
                    "No dataset given: pass --dataset=ml-100k (see `python -m recbole_llm.data list`)."
                )
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        properties = properties_dir()
        for file in (
            properties / "overall.yaml",
            properties / "model" / f"{model}.yaml",
            properties / "dataset" / f"{dataset}.yaml",
        ):
            if file.is_file():
                loaded = self._update_internal_config_dict(str(file))
                if file.parent.name == "dataset" and loaded:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        final = self.final_config_dict
        for key, optional in POSITIVE_INT_KEYS.items():
            if key in final:
                check_positive_int(key, final[key], optional)
        if "learning_rate" in final:
            check_learning_rate(final["learning_rate"])
        if "llm_init_trainable" in final and not isinstance(final["llm_init_trainable"], bool):
            raise UserError(
                f"llm_init_trainable={final['llm_init_trainable']!r} must be True (fine-tune the LLM-initialised "
                "item table, CFT's SASRec*/GRU4Rec*) or False (keep it frozen)."
            )
        super()._set_default_parameters()
        # RecBole hard-wires ``ml-100k`` to its bundled raw copy; we always read the prepared split.
        data_root = self.external_config_dict.get("data_path", self.internal_config_dict.get("data_path"))
        self.final_config_dict["data_root"] = data_root
        # leave_one_out datasets live beside the global-time ones, in <data_root>/leave_one_out/<name>/.
        split = check_split_protocol(self.final_config_dict.get("split_protocol") or "global_time")
        self.final_config_dict["split_protocol"] = split
        self.final_config_dict["data_path"] = os.path.join(split_data_root(data_root, split), self.dataset)
        self.final_config_dict["exclude_history"] = check_exclude_history(
            self.final_config_dict.get("exclude_history", False)
        )
        sample_seed = self.final_config_dict.get("sample_seed")
        if sample_seed is not None and (isinstance(sample_seed, bool) or not isinstance(sample_seed, int)):
            raise ValueError(
                f"sample_seed={sample_seed!r} must be an integer (the seed of the sample subsets)."
            )
        for key, meaning in TRAINER_FLAGS.items():
            if key in self.final_config_dict:
                self.final_config_dict[key] = check_flag(key, self.final_config_dict[key], meaning)
        # RecBole derives valid_metric_bigger from the metric's name and knows no "loss" metric.
        if str(self.final_config_dict.get("valid_metric", "")).lower() == "loss":
            self.final_config_dict["valid_metric_bigger"] = False
        # torchrun / accelerate launch: rank 0 alone logs and shows progress bars. RecBole does this only for
        # its own launcher (``local_rank`` in the config, which would also start NCCL on its own).
        if not is_main_process():
            self.final_config_dict["state"] = "error"
            self.final_config_dict["show_progress"] = False
