"""The D3 ensemble's traditional model (D3 §3.3), rebuilt from another run's checkpoint.

A trained SASRec (or any RecBole sequential model) of the same prepared split guides the LLM's beam
search. Rebuilding it needs the run's own settings and a ``Config``, which live above ``model/``; so this
module loads it and :func:`recbole_llm.quick_start.load_run` hands it to the LLM model
(``set_ensemble_model``), which keeps it frozen and outside its module tree.
"""

from __future__ import annotations

from typing import Any

import torch

from recbole_llm.config import Config
from recbole_llm.model import get_model
from recbole_llm.utils.checkpoint import safe_torch_load

# Settings of the checkpoint's run that describe where it ran, not its architecture: this run's apply.
_RUN_LOCAL_KEYS = ("data_path", "checkpoint_dir", "results_dir", "device", "gpu_id", "state", "show_progress")


def load_ensemble_model(path: str, config: Any, n_items: int) -> torch.nn.Module:
    """The D3 ensemble's traditional model from ``path`` (``DecodingSettings.ensemble_checkpoint``), a
    checkpoint of the same prepared split; ``config`` is this run's (dataset, data root)."""
    state = safe_torch_load(path, map_location="cpu")
    model_name = state.get("model", "SASRec")
    # The run's own settings (hidden_size, n_layers, ...) rebuild its architecture; paths come from this run.
    overrides = {k: v for k, v in (state.get("config_overrides") or {}).items() if k not in _RUN_LOCAL_KEYS}
    overrides["data_path"] = config["data_root"]
    sub = Config(model=model_name, dataset=config["dataset"], config_dict=overrides)
    dataset = _ItemCountStub(sub, n_items)
    model = get_model(model_name)(sub, dataset)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"ensemble_checkpoint {path} does not match this dataset ({n_items} item ids) or its recorded "
            f"{model_name} settings: train the traditional model on the same prepared split with this "
            f"version (its checkpoint then records its settings). Details: {str(err).splitlines()[0]}"
        ) from err
    return model.eval()


class _ItemCountStub:
    """Just enough of a RecBole dataset to construct a sequential model (no data loading)."""

    def __init__(self, config: Any, n_items: int):
        self.config = config
        self.item_num = n_items
        self.user_num = 1
        self.uid_field = config["USER_ID_FIELD"]
        self.iid_field = config["ITEM_ID_FIELD"]

    def num(self, field: str) -> int:
        return self.item_num if field == self.iid_field else self.user_num

    def get_user_feature(self) -> None:
        return None

    def get_item_feature(self) -> None:
        return None
