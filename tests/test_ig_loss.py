"""IGD §4.2.1's token loss by IG group, as the trainer logs it; numbers by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from recbole_llm.trainer.ig_loss import IGLossTracker, loss_by_ig_group, median_positive_ig


def test_loss_by_ig_group_and_median():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ig = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.0])
    assert loss_by_ig_group(losses, ig) == {"zero": (6.0, 2), "low": (5.0, 2), "high": (4.0, 1)}
    assert loss_by_ig_group(losses, ig, 0.6) == {"zero": (6.0, 2), "low": (2.0, 1), "high": (7.0, 2)}
    # weighted lower median of the positive values 1 (w 1), 2 (w 1), 3 (w 3): cumulative 1, 2, 5 >= 2.5 -> 3
    assert median_positive_ig(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([5.0, 1.0, 1.0, 3.0])) == 3.0
    assert math.isnan(median_positive_ig(torch.zeros(3)))
    with pytest.raises(ValueError, match="one IG per token"):
        loss_by_ig_group(losses, ig[:3])


class _Board:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_ig_loss_tracker_writes_epochs_and_tensorboard(tmp_path):
    board = _Board()
    tracker = IGLossTracker(tmp_path / "run" / "ig_loss.csv", threshold=0.6, tensorboard=board)
    tracker.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))
    tracker.update(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    assert tracker.flush(0) == {"zero": 2.0, "low": 2.0, "high": 4.0}
    vocab = 7  # zero logits: every token's cross-entropy is log(vocab)
    tracker.update_from_logits(
        torch.zeros(3, vocab), torch.tensor([1, 2, -100]), torch.tensor([0.0, 0.0, 5.0])
    )
    assert tracker.flush(1)["zero"] == pytest.approx(math.log(vocab))
    frame = pd.read_csv(tmp_path / "run" / "ig_loss.csv")
    assert frame[frame["epoch"] == 0].set_index("group")["tokens"].to_dict() == {
        "zero": 2,
        "low": 1,
        "high": 1,
    }
    assert frame[frame["epoch"] == 1].set_index("group")["tokens"].to_dict() == {
        "zero": 2,
        "low": 0,
        "high": 0,
    }
    assert ("IG_loss/high", 4.0, 0) in board.scalars and not any(
        s[2] == 1 and s[0] == "IG_loss/low" for s in board.scalars
    )


def test_tracker_threshold_from_item_token_table():
    table = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 9.0], [2.0, 0.0, 0.0]])
    lengths = torch.tensor([0, 3, 2])  # item 1's padding (index 2 of item 2) is not a token
    tracker = IGLossTracker.for_token_table("unused.csv", table, lengths, torch.tensor([0.0, 1.0, 5.0]))
    assert tracker.threshold == 2.0  # positives 1 (w 1), 9 (w 1), 2 (w 5): weighted lower median = 2


def test_a_resumed_epoch_continues_its_sums_and_replaces_its_rows(tmp_path):
    """Resume mid-epoch: the tracker's state carries the epoch's first tokens; a second flush of one
    epoch (a run killed between the flush and its next checkpoint) replaces that epoch's rows."""
    csv_path = tmp_path / "ig_loss.csv"
    whole = IGLossTracker(tmp_path / "whole.csv", threshold=0.6)
    whole.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))
    whole.update(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    expected = whole.flush(0)

    first = IGLossTracker(csv_path, threshold=0.6)
    first.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))
    state = first.state()  # the mid-epoch checkpoint
    assert state == {
        "sums": {"zero": 1.0, "low": 2.0, "high": 0.0},
        "counts": {"zero": 1, "low": 1, "high": 0},
    }
    resumed = IGLossTracker(csv_path, threshold=0.6)
    resumed.load_state(state)
    resumed.update(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    assert resumed.flush(0) == expected == {"zero": 2.0, "low": 2.0, "high": 4.0}
    assert csv_path.read_text() == (tmp_path / "whole.csv").read_text()

    again = IGLossTracker(csv_path, threshold=0.6)
    again.load_state(state)
    again.update(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    again.flush(0)  # the same epoch flushed twice
    frame = pd.read_csv(csv_path)
    assert len(frame) == 3 and frame["epoch"].tolist() == [0, 0, 0]
    assert csv_path.read_text() == (tmp_path / "whole.csv").read_text()
