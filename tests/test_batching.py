"""Batch plans: every sample once per epoch, low padding, deterministic, balanced across processes."""

import numpy as np
import pytest

from recbole_llm.trainer.batching import padding_share, plan_epoch, shard


def _flatten(plan):
    return np.concatenate([np.concatenate(mbs) for mbs in plan])


def test_plan_covers_every_sample_once_and_respects_sizes():
    lengths = np.arange(100) % 17 + 5
    plan = plan_epoch(lengths, batch_size=32, micro_batch_size=8, seed=1, epoch=0)
    assert sorted(_flatten(plan).tolist()) == list(range(100))
    assert [sum(len(m) for m in mbs) for mbs in plan] == [32, 32, 32, 4]
    assert all(len(m) <= 8 for mbs in plan for m in mbs)


def test_plan_is_a_function_of_seed_and_epoch():
    lengths = np.arange(50)
    a = _flatten(plan_epoch(lengths, 16, 4, seed=3, epoch=2))
    b = _flatten(plan_epoch(lengths, 16, 4, seed=3, epoch=2))
    c = _flatten(plan_epoch(lengths, 16, 4, seed=3, epoch=3))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_micro_batches_are_sorted_by_length_so_padding_is_low():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=512)
    grouped = plan_epoch(lengths, 64, 8, seed=0, epoch=0)
    random = [[order[i : i + 8] for i in range(0, 64, 8)] for order in np.split(rng.permutation(512), 8)]
    assert padding_share(lengths, grouped) < 0.1
    assert padding_share(lengths, grouped) < padding_share(lengths, random) / 3


def test_padding_share_by_hand():
    lengths = np.array([4, 2, 3, 3])
    # micro-batch [0,1]: padded 2*4=8, real 6; [2,3]: padded 6, real 6 -> 1 - 12/14
    assert padding_share(lengths, [[np.array([0, 1]), np.array([2, 3])]]) == pytest.approx(1 - 12 / 14)


def test_world_size_gives_each_process_the_same_number_of_micro_batches():
    plan = plan_epoch(np.ones(30), batch_size=10, micro_batch_size=4, seed=0, epoch=0, world_size=2)
    for mbs in plan:
        assert len(mbs) % 2 == 0
        assert len(shard(mbs, 0, 2)) == len(shard(mbs, 1, 2))
    assert sorted(_flatten(plan).tolist()) == list(range(30))


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="micro_batch_size"):
        plan_epoch(np.ones(4), 4, 0, 0, 0)
