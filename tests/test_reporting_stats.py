"""Per-sample metrics, intervals, paired tests, Holm and seed aggregates (reporting/stats.py); numbers by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recbole_llm.reporting import stats

ITEMS = [["a", "b", "c"], ["x", "y"], ["q"]]  # the second list is short and misses its target
TARGETS = ["b", "z", "q"]


def test_target_ranks_and_per_sample_metrics_by_hand():
    ranks = stats.target_ranks(ITEMS, TARGETS)
    assert ranks.tolist() == [2, 0, 1]
    assert stats.sample_values("hit@1", ranks).tolist() == [0, 0, 1]
    assert stats.sample_values("hit@2", ranks).tolist() == [1, 0, 1]
    assert stats.sample_values("recall@2", ranks).tolist() == [1, 0, 1]
    assert stats.sample_values("precision@2", ranks).tolist() == [0.5, 0, 0.5]
    assert stats.sample_values("ndcg@2", ranks) == pytest.approx([1 / math.log2(3), 0, 1])
    assert stats.sample_values("ndcg@1", ranks) == pytest.approx([0, 0, 1])
    assert stats.sample_values("mrr@3", ranks) == pytest.approx([0.5, 0, 1])
    assert stats.has_sample_form("ndcg@10") and not stats.has_sample_form("itemcoverage@10")
    with pytest.raises(ValueError, match="no per-sample form"):
        stats.sample_values("giniindex@10", ranks)


def test_per_sample_metrics_equal_recboles_metric_classes():
    from recbole.config import Config
    from recbole.evaluator.metrics import MRR, NDCG, Hit, Precision, Recall

    Config.compatibility_settings(None)  # RecBole's metric classes use np.float (its Config installs it)

    ranks = np.array([2, 0, 1, 3, 5])
    k = 4
    pos_index = np.zeros((len(ranks), k), dtype=bool)
    for u, r in enumerate(ranks):
        if 1 <= r <= k:
            pos_index[u, r - 1] = True
    pos_len = np.ones(len(ranks), dtype=np.int64)
    config = {"topk": [k], "metric_decimal_place": 6}
    for cls, name in (
        (NDCG, "ndcg"),
        (Hit, "hit"),
        (MRR, "mrr"),
        (Recall, "recall"),
        (Precision, "precision"),
    ):
        metric = cls(config)
        expected = (
            metric.metric_info(pos_index)
            if name in ("hit", "mrr", "precision")
            else metric.metric_info(pos_index, pos_len)
        )[:, k - 1]
        assert stats.sample_values(f"{name}@{k}", ranks) == pytest.approx(expected), name


def test_t_and_wilson_intervals_by_hand():
    # [1, 2, 3, 4]: mean 2.5, s = sqrt(5/3), t_{0.975,3} = 3.182446 -> half-width 3.182446 * 1.290994 / 2
    lo, hi = stats.t_interval([1, 2, 3, 4])
    assert (lo, hi) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=1e-5)
    # 1 success in 10, z = 1.959964: the textbook Wilson interval [0.0179, 0.4042]
    assert stats.wilson_interval(1, 10) == pytest.approx((0.017875, 0.404150), abs=1e-5)
    assert stats.metric_interval("hit@10", [1] + [0] * 9) == pytest.approx((0.017875, 0.404150), abs=1e-5)
    # precision@2 is hit / 2: the same interval, halved
    assert stats.metric_interval("precision@2", [0.5] + [0] * 9) == pytest.approx(
        (0.0089375, 0.202075), abs=1e-5
    )
    # NDCG of [0.2, 0.3, 0.4, 0.5]: t interval 0.35 ± 0.205426; near 0 it is clipped at 0 (values are >= 0)
    assert stats.metric_interval("ndcg@10", [0.2, 0.3, 0.4, 0.5]) == pytest.approx(
        (0.144574, 0.555426), abs=1e-5
    )
    assert stats.metric_interval("ndcg@10", [0.0, 0.0, 0.0, 0.4]) == pytest.approx(
        (0.0, 0.1 + 3.182446 * 0.2 / 2), abs=1e-5
    )  # s = 0.2
    assert all(math.isnan(v) for v in stats.t_interval([0.3]))
    # hits averaged over two seeds are not 0/1: the t interval of [.5, .5, 0, .5, .5, 1] (mean 0.5, s^2 = 0.1)
    half = 2.570582 * math.sqrt(0.1 / 6)
    assert stats.metric_interval("hit@10", [0.5, 0.5, 0, 0.5, 0.5, 1]) == pytest.approx(
        (0.5 - half, 0.5 + half), abs=1e-5
    )


def test_paired_bootstrap_interval_by_exact_resampling_distribution():
    # Equal differences: every resample has the same mean.
    assert stats.paired_bootstrap_interval([3, 4, 5], [1, 2, 3]) == pytest.approx((2, 2))
    # d = [0, 1]: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 2.5 % is 0, 97.5 % is 1.
    assert stats.paired_bootstrap_interval([0, 1], [0, 0]) == pytest.approx((0, 1))
    # d = [0, 0, 3]: resample mean = number of 3s drawn, P = 8/27, 12/27, 6/27, 1/27 for 0..3;
    # P(mean <= 2) = 26/27 = 0.963 < 0.975, so the upper end is 3, the lower 0.
    assert stats.paired_bootstrap_interval([0, 0, 3], [0, 0, 0]) == pytest.approx((0, 3))
    # Fixed seed: the same interval every time; direction follows a - b.
    a, b = np.arange(50) % 3, np.arange(50) % 2
    first = stats.paired_bootstrap_interval(a, b)
    assert stats.paired_bootstrap_interval(a, b) == first
    assert stats.paired_bootstrap_interval(b, a) == pytest.approx((-first[1], -first[0]), abs=0.05)


def test_sign_flip_p_value_by_exact_enumeration():
    # d = [1, 2, 3]: sums over the 8 sign patterns are ±6, ±4, ±2, 0, 0 -> |sum| >= 6 in 2 of 8.
    assert stats.sign_flip_p_value([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)
    # Zeros carry no information: d = [1, 0, 2, 0, 3] gives the same p.
    assert stats.sign_flip_p_value([1, 0, 2, 0, 3], [0] * 5) == pytest.approx(0.25)
    # Five equal differences: only the all-plus and all-minus patterns reach |sum| = 5 -> 2 / 32.
    assert stats.sign_flip_p_value([1] * 5, [0] * 5) == pytest.approx(1 / 16)
    # d = [1, -1]: sums 0, 2, -2, 0 -> |sum| >= 0 always.
    assert stats.sign_flip_p_value([1, 0], [0, 1]) == pytest.approx(1.0)
    assert stats.sign_flip_p_value([0.2, 0.3], [0.2, 0.3]) == 1.0


def test_sign_flip_monte_carlo_beyond_the_exact_limit():
    # 20 equal differences: the exact p is 2 / 2**20; random flips almost never reach it -> (1 + 0) / 10001.
    p = stats.sign_flip_p_value([1] * 20, [0] * 20)
    assert p == pytest.approx(1 / 10_001)
    # With the exact limit raised the same data is enumerated exactly.
    assert stats.sign_flip_p_value([1] * 12, [0] * 12, exact_max=12) == pytest.approx(2 / 2**12)
    # Balanced data: p near 1, reproducible.
    d = [1, -1] * 15
    assert stats.sign_flip_p_value(d, [0] * 30) == stats.sign_flip_p_value(d, [0] * 30) > 0.9


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.02, math.nan, 0.5])  # NaN rows are not in the family: m = 2
    assert (
        adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    )
    assert stats.holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # capped at 1, monotone
    assert stats.holm([]) == []


def test_mean_std_of_seeds_by_hand():
    assert stats.mean_std([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1, 3))
    mean, std, n = stats.mean_std([0.25])
    assert (mean, n) == (0.25, 1) and math.isnan(std)


def test_bootstrap_skipping_zero_differences_matches_plain_resampling():
    # Plain bootstrap (n uniform draws per resample) of 300 mostly-equal pairs vs the binomial shortcut.
    rng = np.random.default_rng(7)
    a, b = (rng.random(300) < 0.15).astype(float), (rng.random(300) < 0.10).astype(float)
    d = a - b
    plain = d[rng.integers(0, 300, size=(20_000, 300))].mean(axis=1)
    expected = np.quantile(plain, [0.025, 0.975])
    assert stats.paired_bootstrap_interval(a, b, n_resamples=20_000) == pytest.approx(expected, abs=0.006)
