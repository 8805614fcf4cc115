"""RecBole ``Config`` that knows the plugin's models and YAML files (the RecBole-GNN pattern).

Resolution order (lowest to highest priority), as in RecBole:
recbole's own defaults < ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` <
``properties/dataset/<dataset>.yaml`` < ``--config_files`` < ``config_dict`` < ``--key=value``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_llm.data.prepare import split_data_root
from recbole_llm.data.protocol import check_split_protocol
from recbole_llm.model import get_model
from recbole_llm.utils.config_access import check_exclude_history, parse_value
from recbole_llm.utils.distributed import is_main_process

PROPERTIES_DIR = Path(
    os.environ.get("RECBOLE_LLM_PROPERTIES", Path(__file__).resolve().parent.parent / "properties")
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


class Config(RecBoleConfig):
    """RecBole config that finds ``LLMGenRec`` and the plugin's ``properties/`` files.

    Also hardens RecBole: YAML is read with a safe loader and command-line values are parsed with
    ``ast.literal_eval`` instead of ``eval``.
    """

    def _build_yaml_loader(self):
        return _SafeFloatLoader

    def _convert_config_dict(self, config_dict: dict) -> dict:
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = parse_value(value)
        return config_dict

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("No model given: pass --model=SASRec (or LLMGenRec, GRU4Rec, Caser, ...).")
        if isinstance(model, str):
            model_name, model_class = model, get_model(model)
        else:
            model_name, model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError(
                    "No dataset given: pass --dataset=ml-100k (see `python -m recbole_llm.data list`)."
                )
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in (
            PROPERTIES_DIR / "overall.yaml",
            PROPERTIES_DIR / "model" / f"{model}.yaml",
            PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
        ):
            if file.is_file():
                loaded = self._update_internal_config_dict(str(file))
                if file.parent.name == "dataset" and loaded:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
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
        # RecBole derives valid_metric_bigger from the metric's name and knows no "loss" metric.
        if str(self.final_config_dict.get("valid_metric", "")).lower() == "loss":
            self.final_config_dict["valid_metric_bigger"] = False
        # torchrun / accelerate launch: rank 0 alone logs and shows progress bars. RecBole does this only for
        # its own launcher (``local_rank`` in the config, which would also start NCCL on its own).
        if not is_main_process():
            self.final_config_dict["state"] = "error"
            self.final_config_dict["show_progress"] = False
