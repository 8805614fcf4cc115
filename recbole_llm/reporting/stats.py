"""Per-sample metrics, intervals and paired tests for ``compare``: is a difference more than test-sample noise?

With one relevant item per test sample (next-item prediction), a run's HR@K / NDCG@K is the mean of a
per-sample value computed from its ranked list (its ``rankings.jsonl``), so its noise is the noise of a
mean over test samples, and two runs on the same samples are compared sample by sample (paired).

Choices, and why:

* **Interval of a mean**: Wilson score interval for the 0/1 metrics (hit, recall; precision is hit / K):
  with HR@10 near 0.05 on 200 samples a t interval is symmetric and may cross 0, Wilson stays inside
  [0, 1] and keeps its coverage for small proportions. Student-t interval for the graded ones (NDCG,
  MRR). Both are closed-form, so equal for everyone and hand-checkable (no resampling noise).
* **Difference of two rows**: percentile bootstrap of the mean of the paired differences (10,000
  resamples of the test samples, fixed seed), assuming nothing about the differences' distribution.
  Percentile, not BCa: with thousands of samples the two agree, and percentile is checkable by hand.
* **Paired test**: two-sided sign-flip (paired randomisation) test of the mean difference: under "no
  difference" each sample's difference is as likely to have either sign. Exact enumeration when at most
  16 samples differ (samples with equal values carry no information), else 10,000 random sign flips
  (fixed seed), p = (1 + #{|flipped sum| >= |observed sum|}) / (1 + 10,000). Chosen over a paired
  t-test because hit differences are in {-1, 0, 1}, far from normal on small test sets.
* **Several rows against one base**: Holm's step-down correction (controls the family-wise error).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
N_RESAMPLES = 10_000
SEED = 0
EXACT_MAX = 16  # at most 2**16 sign patterns are enumerated exactly
_CHUNK_CELLS = 4_000_000  # resamples are drawn in chunks of about this many cells (bounds the memory)

# Per-sample metrics with one target: hit/recall/precision are 0/1 (or 1/K), ndcg/mrr graded.
SAMPLE_METRICS = ("hit", "recall", "precision", "ndcg", "mrr")
BINARY_METRICS = ("hit", "recall", "precision")


def target_ranks(items: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based rank of each sample's target in its ranked list; 0 when the list does not hold it."""
    ranks = np.zeros(len(targets), dtype=np.int64)
    for i, (ranked, target) in enumerate(zip(items, targets, strict=True)):
        for r, item in enumerate(ranked, start=1):
            if item == target:
                ranks[i] = r
                break
    return ranks


def sample_values(metric: str, ranks: np.ndarray) -> np.ndarray:
    """Per-sample values of ``metric`` (``hit@10``) from target ranks, as RecBole's classes compute them.

    hit = recall = [rank <= K] (one relevant item), precision = hit / K, NDCG = 1 / log2(rank + 1) (the
    ideal DCG of one relevant item is 1), MRR = 1 / rank; all 0 when the target is not in the top K.
    """
    name, _, k_text = metric.lower().partition("@")
    if name not in SAMPLE_METRICS or not k_text.isdigit():
        raise ValueError(f"no per-sample form for {metric!r}; known: {', '.join(SAMPLE_METRICS)} (as hit@10)")
    k = int(k_text)
    ranks = np.asarray(ranks, dtype=np.float64)
    found = (ranks >= 1) & (ranks <= k)
    safe = np.where(found, ranks, 1.0)
    if name in ("hit", "recall"):
        return found.astype(np.float64)
    if name == "precision":
        return found / k
    if name == "ndcg":
        return np.where(found, 1.0 / np.log2(safe + 1.0), 0.0)
    return np.where(found, 1.0 / safe, 0.0)


def has_sample_form(metric: str) -> bool:
    """Whether :func:`sample_values` knows ``metric`` (coverage, popularity etc. are not per-sample means)."""
    name, _, k_text = metric.lower().partition("@")
    return name in SAMPLE_METRICS and k_text.isdigit()


def t_interval(values: Sequence[float], level: float = 1 - ALPHA) -> tuple[float, float]:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n-1} · s / sqrt(n) (s with ddof=1)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return (math.nan, math.nan)
    half = sps.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return (float(x.mean() - half), float(x.mean() + half))


def wilson_interval(successes: float, n: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """Wilson score interval of a proportion: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n < 1:
        return (math.nan, math.nan)
    z = sps.norm.ppf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def metric_interval(metric: str, values: Sequence[float], level: float = 1 - ALPHA) -> tuple[float, float]:
    """95 % interval of a row's metric from its per-sample values: Wilson for 0/1 metrics, else t.

    Values averaged over seeds (0.5 = a hit in one of two seeds) are not 0/1: they get the t interval,
    clipped to [0, 1] (every per-sample value lies there, so its mean does too).
    """
    x = np.asarray(values, dtype=np.float64)
    name, _, k_text = metric.lower().partition("@")
    scale = 1.0 / int(k_text) if name == "precision" else 1.0
    if name in BINARY_METRICS and np.isin(x / scale, (0.0, 1.0)).all():
        lo, hi = wilson_interval(float((x / scale).sum()), len(x), level)
        return (lo * scale, hi * scale)
    lo, hi = t_interval(x, level)
    return (max(lo, 0.0), min(hi, 1.0)) if not math.isnan(lo) else (lo, hi)


def paired_bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    level: float = 1 - ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a - b): test samples resampled with replacement, pairs kept.

    Drawn without touching the zero differences (most samples, when two runs mostly agree): of a
    resample's n draws, K ~ Binomial(n, m / n) land on the m non-zero ones, uniformly; the same
    distribution as n uniform draws, at a cost in m instead of n (the full 9,834-sample split in
    a fraction of a second).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0:
        return (math.nan, math.nan)
    nonzero = d[d != 0]
    m = len(nonzero)
    if m == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // m)
    means = []
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        counts = rng.binomial(n, m / n, size=rows)
        picked = nonzero[rng.integers(0, m, size=int(counts.sum()))]
        sums = np.bincount(np.repeat(np.arange(rows), counts), weights=picked, minlength=rows)
        means.append(sums / n)
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def sign_flip_p_value(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    exact_max: int = EXACT_MAX,
) -> float:
    """Two-sided paired randomisation p-value of mean(a - b) = 0 (sign-flip test; see the module doc).

    Only the samples whose values differ matter (a zero difference flips to itself). Up to ``exact_max``
    of them every sign pattern is enumerated, identity included (p = share with |sum| >= observed);
    beyond, ``n_resamples`` random patterns with the add-one estimate (1 + hits) / (1 + n_resamples).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, observed)
    if len(d) <= exact_max:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    hits = 0
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // len(d))
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        signs = rng.integers(0, 2, size=(rows, len(d)), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + n_resamples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order): sorted p_(i) -> max_{j<=i} min(1, (m - j + 1) p_(j)).

    NaN entries (rows without a test) are kept as NaN and do not count in the family size m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for j, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, sample std (ddof=1; NaN for one value), count)`` of the finite values (seed groups)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan, 0)
    return (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x))
