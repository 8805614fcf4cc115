"""Token loss by information-gain group during training (IGD §4.2.1), logged per epoch by the trainer.

The mean token loss of zero-, low- and high-IG target tokens (low/high split at the median positive
IG of the training target tokens), per epoch, to ``<run_dir>/ig_loss.csv`` and TensorBoard; the
analysis command ``ig-loss`` plots what it wrote. It lives with the trainer, which feeds it every
training micro-batch; the IG statistics of titles (IGD Table 4, Fig. 1-3) are ``analysis.ig_stats``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from recbole_llm.model.prompt import IGNORE_INDEX
from recbole_llm.utils.distributed import reduce_sum
from recbole_llm.utils.io import write_text_atomic

IG_GROUPS = ("zero", "low", "high")
ZERO_TOL = 1e-9


def median_positive_ig(token_ig: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """(Weighted, lower) median of the positive IG values: the low/high split of IGD §4.2.1.

    ``weights`` counts how often each token occurs (e.g. its item's training-target count), so the
    median is over training tokens as the loss sees them. NaN when no token has positive IG.
    """
    ig = torch.as_tensor(token_ig, dtype=torch.float64).reshape(-1)
    w = torch.ones_like(ig) if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    keep = (ig > ZERO_TOL) & (w > 0)
    ig, w = ig[keep], w[keep]
    if len(ig) == 0:
        return math.nan
    order = torch.argsort(ig, stable=True)
    ig, cum = ig[order], torch.cumsum(w[order], 0)
    return float(ig[int(torch.searchsorted(cum, cum[-1] / 2))])


def loss_by_ig_group(
    token_losses: torch.Tensor, token_ig: torch.Tensor, low_high_threshold: float | None = None
) -> dict[str, tuple[float, int]]:
    """``{group: (loss sum, token count)}`` for zero IG, low IG (``0 < IG <= threshold``) and high IG.

    ``low_high_threshold`` defaults to the median positive IG of the given tokens; pass a fixed value
    (the dataset-level median, see :func:`median_positive_ig`) to keep groups stable across batches.
    """
    loss = torch.as_tensor(token_losses).detach().reshape(-1).double().cpu()
    ig = torch.as_tensor(token_ig).detach().reshape(-1).double().cpu()
    if loss.shape != ig.shape:
        raise ValueError(
            f"token_losses has {loss.numel()} values but token_ig has {ig.numel()}: one IG per token."
        )
    threshold = median_positive_ig(ig) if low_high_threshold is None else float(low_high_threshold)
    zero = ig.abs() <= ZERO_TOL
    low = ~zero & (ig <= threshold) if not math.isnan(threshold) else torch.zeros_like(zero)
    high = ~zero & ~low
    return {
        name: (float(loss[m].sum()), int(m.sum()))
        for name, m in zip(IG_GROUPS, (zero, low, high), strict=True)
    }


class IGLossTracker:
    """Accumulates token losses by IG group over an epoch, then writes ``ig_loss.csv`` and TensorBoard scalars.

    The trainer calls :meth:`update` (or :meth:`update_from_logits`) for every training micro-batch and
    :meth:`flush` once per epoch. CSV columns: ``epoch, group, mean_loss, tokens, threshold``.
    """

    def __init__(
        self, csv_path: str | Path, threshold: float | None = None, tensorboard=None, write: bool = True
    ):
        self.csv_path = Path(csv_path)
        self.threshold = threshold
        self.tensorboard = tensorboard
        self.write = write  # False on ranks other than 0: they only add their sums to rank 0's
        self._reset()

    @classmethod
    def for_token_table(
        cls,
        csv_path: str | Path,
        token_ig: torch.Tensor,
        lengths: torch.Tensor,
        popularity: torch.Tensor,
        tensorboard=None,
        write: bool = True,
    ) -> IGLossTracker:
        """Tracker whose low/high split is the median positive IG over the training target tokens.

        ``token_ig[i, :lengths[i]]`` is the IG of item ``i``'s title tokens (LLMGenRec's ``item_token_ig``
        and ``item_lengths``); ``popularity[i]`` (its training-target count) weights those tokens.
        """
        token_ig = token_ig.detach().cpu()
        valid = torch.arange(token_ig.shape[1]).unsqueeze(0) < lengths.detach().cpu().view(-1, 1)
        weights = popularity.detach().cpu().double()[: token_ig.shape[0]].unsqueeze(1).expand_as(token_ig)
        return cls(csv_path, median_positive_ig(token_ig[valid], weights[valid]), tensorboard, write)

    def _reset(self) -> None:
        self._sums = dict.fromkeys(IG_GROUPS, 0.0)
        self._counts = dict.fromkeys(IG_GROUPS, 0)

    def update(self, token_losses: torch.Tensor, token_ig: torch.Tensor) -> None:
        for name, (total, count) in loss_by_ig_group(token_losses, token_ig, self.threshold).items():
            self._sums[name] += total
            self._counts[name] += count

    @torch.no_grad()
    def update_from_logits(self, logits: torch.Tensor, labels: torch.Tensor, token_ig: torch.Tensor) -> None:
        """Per-token cross-entropy of target logits ``[T, V]`` and labels ``[T]`` (``IGNORE_INDEX`` ignored)."""
        keep = labels != IGNORE_INDEX
        losses = torch.nn.functional.cross_entropy(
            logits[keep].detach().float(), labels[keep], reduction="none"
        )
        self.update(losses, token_ig.to(keep.device)[keep])

    def state(self) -> dict[str, dict[str, float]]:
        """The epoch's running sums and counts (over all processes), for a resumable checkpoint mid-epoch.

        With several processes every rank must call it (a collective sum).
        """
        sums, counts = self._totals()
        return {"sums": sums, "counts": {g: int(round(v)) for g, v in counts.items()}}

    def _totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """Sums and counts of every process's tokens (this process's alone without a process group)."""
        both = reduce_sum(
            {**{f"s/{g}": v for g, v in self._sums.items()}, **{f"c/{g}": v for g, v in self._counts.items()}}
        )
        return {g: both[f"s/{g}"] for g in IG_GROUPS}, {g: both[f"c/{g}"] for g in IG_GROUPS}

    def load_state(self, state: dict[str, dict[str, float]]) -> None:
        """Continue an epoch from :meth:`state` (a resumed run logs the whole epoch, not its tail)."""
        self._sums.update({g: float(v) for g, v in state["sums"].items()})
        self._counts.update({g: int(v) for g, v in state["counts"].items()})

    def flush(self, epoch: int, tensorboard=None) -> dict[str, float]:
        """Write this epoch's means to the CSV (and TensorBoard ``IG_loss/<group>``), then reset.

        Rows of ``epoch`` already in the CSV are replaced, not repeated: a run killed after the flush and
        before its next checkpoint redoes the epoch's tail on resume and flushes the epoch again.
        """
        sums, counts = self._totals()  # every rank calls flush: a collective sum with several processes
        self._sums, self._counts = sums, {g: int(round(v)) for g, v in counts.items()}
        means = {g: self._sums[g] / self._counts[g] if self._counts[g] else math.nan for g in IG_GROUPS}
        if not self.write:
            self._reset()
            return means
        rows = [["epoch", "group", "mean_loss", "tokens", "threshold"]]
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as fh:
                rows += [row for row in list(csv.reader(fh))[1:] if row and row[0] != str(epoch)]
        rows += [[epoch, g, means[g], self._counts[g], self.threshold] for g in IG_GROUPS]
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        write_text_atomic(self.csv_path, text.getvalue())
        writer_tb = tensorboard or self.tensorboard
        if writer_tb is not None:
            for g in IG_GROUPS:
                if self._counts[g]:
                    writer_tb.add_scalar(f"IG_loss/{g}", means[g], epoch)
        self._reset()
        return means


__all__ = ["IG_GROUPS", "ZERO_TOL", "IGLossTracker", "loss_by_ig_group", "median_positive_ig"]
