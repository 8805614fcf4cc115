"""RecBole's trainer with checkpoints that load under ``torch.load(weights_only=True)``.

RecBole 1.2.1 pickles the whole ``Config`` into each checkpoint; with torch >= 2.6 every reload
(best-model evaluation, resume) then fails, and unpickling a user-supplied file is unsafe anyway.
Checkpoints here hold only tensors and plain numbers.
"""

from __future__ import annotations

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_llm.model.decoding.items import mask_history_scores
from recbole_llm.trainer.evaluation import Rankings, top_scored
from recbole_llm.utils.checkpoint import safe_torch_load
from recbole_llm.utils.distributed import single_process_only
from recbole_llm.utils.io import atomic_write
from recbole_llm.utils.results import jsonable


class SafeTrainer(Trainer):
    """RecBole ``Trainer`` whose checkpoints are plain state dicts, written atomically.

    One process only: under torchrun / accelerate launch RecBole's loop (``single_spec``) would train a full
    copy per process and write one checkpoint each, so a multi-process launch is refused up front.
    """

    def __init__(self, config, model):
        single_process_only(config["model"])
        super().__init__(config, model)
        self._ranked_batches: list[Rankings] = []  # what _full_sort_batch_eval ranked, in batch order
        self.last_rankings: Rankings | None = None  # the last evaluate's top-K lists (the rankings file)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "model": self.config["model"],
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # Plain JSON values (weights_only-safe): what rebuilds this architecture elsewhere (D3 ensemble).
            "config_overrides": {k: jsonable(v) for k, v in self.config.external_config_dict.items()},
        }
        atomic_write(saved_model_file, lambda tmp: torch.save(state, tmp))
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        checkpoint = safe_torch_load(resume_file, map_location=self.device)
        if checkpoint.get("model", "").lower() != self.config["model"].lower():
            raise ValueError(
                f"Checkpoint {resume_file} was trained with model {checkpoint.get('model')!r}, not "
                f"{self.config['model']!r}: pass the matching --model or another checkpoint."
            )
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _full_sort_batch_eval(self, batched_data):
        """RecBole's full-sort scores; with ``exclude_history`` every item of the sample's history gets
        ``-inf`` (RecBole masks nothing for sequential data: its ``history_index`` is None there)."""
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["exclude_history"]:
            scores = mask_history_scores(scores, interaction[self.model.ITEM_SEQ])
        items, values = top_scored(scores, max(self.config["topk"]))
        uid, iid = self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"]
        row = Rankings(interaction[uid].cpu(), interaction[iid].cpu(), items.cpu(), values.float().cpu())
        self._ranked_batches.append(row)
        return interaction, scores, positive_u, positive_i

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = safe_torch_load(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        self._ranked_batches = []
        result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        # What RecBole's Collector scored (its torch.topk of the same scores), for the rankings file.
        if self._ranked_batches:
            self.last_rankings = Rankings(
                *(torch.cat(col) for col in zip(*self._ranked_batches, strict=True))
            )
        self._ranked_batches = []
        return result
