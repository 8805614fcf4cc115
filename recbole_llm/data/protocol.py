"""The data protocol shared by every model (docs/design.md §1), as small pure functions.

Interaction frames have the columns ``user_id`` (str), ``item_id`` (str) and ``timestamp`` (UTC seconds);
their row order is the *original* order of the raw file and is used as the last tie-break everywhere,
so that the output does not depend on any hash or sort instability.

The reference is D3's ``process.py`` (also used by IGD and CFT). Deliberate differences, each documented
at its function: timestamps are UTC (D3 used local naive datetimes), titles get their whitespace
normalised and only ``&name;``-style entities are unescaped, titles that pandas would read back as NaN
are dropped, and the year back-off stops at the earliest data instead of at 1996.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

import numpy as np
import pandas as pd

# Strings that ``pd.read_csv`` turns into NaN by default (pandas._libs.parsers.STR_NA_VALUES). RecBole reads
# every feature file with the default ``na_values``, so a title or a token equal to one of these would be
# silently lost (tokens would become the padding id).
NA_STRINGS: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
# RecBole names the padding token "[PAD]"; a real token with that name would collide with it.
_RESERVED_TOKENS = NA_STRINGS | {"[PAD]"}

_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_WHITESPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------------- titles
def _unescape_entities(text: str) -> str:
    """Unescape ``&quot;``, ``&amp;``, ``&#39;``... but only complete ``&...;`` entities.

    ``html.unescape`` alone also rewrites legacy entities without a semicolon (``"Heroes&paradise"`` would
    lose ``&para``); D3 only replaced ``&quot;`` and ``&amp;``, which this does identically (single pass,
    so ``&amp;quot;`` becomes ``&quot;`` as in D3).
    """
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)


def normalise_text(text: str) -> str:
    """Replace control characters and every whitespace run (tabs, newlines, NBSP...) by one space."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return _WHITESPACE.sub(" ", text).strip()


def clean_title(raw: object, *, strip_quotes: bool = True, max_words: int = 20) -> str | None:
    """D3's title filter; ``None`` means the item has no usable title and is dropped.

    Steps: missing / non-string / containing ``<span id`` -> None; unescape entities; normalise
    whitespace; strip spaces and (if ``strip_quotes``, as D3 does for Amazon) double quotes at both ends;
    keep if >= 2 characters and <= ``max_words`` words. Titles pandas reads back as NaN (``"None"``,
    ``"NA"``...) are dropped too, since RecBole could never show them.
    """
    if not isinstance(raw, str) or "<span id" in raw:
        return None
    title = normalise_text(_unescape_entities(raw))
    if "<span id" in title:
        return None
    title = title.strip(' "') if strip_quotes else title.strip(" ")
    if len(title) < 2 or len(title.split(" ")) > max_words or title in NA_STRINGS:
        return None
    return title


def count_shared_titles(titles: Mapping[str, str]) -> tuple[int, int]:
    """(number of distinct titles carried by more than one item, number of items carrying such a title)."""
    counts = pd.Series(list(titles.values()), dtype=object).value_counts()
    shared = counts[counts > 1]
    return int(len(shared)), int(shared.sum())


# ----------------------------------------------------------------------------------------------- tokens
def sanitize_token(raw: str) -> str:
    """Whitespace-free, NaN-safe version of an id (``"John Smith"`` -> ``"John_Smith"``, ``"None"`` -> ``"_None"``)."""
    token = _WHITESPACE.sub("_", str(raw).strip())
    return "_" + token if token in _RESERVED_TOKENS else token


def make_tokens(raw_ids: Sequence[Hashable]) -> list[str]:
    """Map distinct raw ids to distinct RecBole tokens (no whitespace, not read back as NaN).

    Ids that are already valid keep their exact spelling. A sanitised id that collides with another token
    gets the first free suffix ``~2``, ``~3``..., assigned in input order (deterministic for a given file).
    """
    raw = [str(r) for r in raw_ids]
    if len(set(raw)) != len(raw):
        raise ValueError("make_tokens expects distinct ids; deduplicate them first (e.g. with pd.unique).")
    base = [sanitize_token(r) for r in raw]
    used = {r for r, b in zip(raw, base) if r == b}
    out: list[str] = []
    for r, b in zip(raw, base):
        if r == b:
            out.append(r)
            continue
        token, k = b, 2
        while token in used:
            token, k = f"{b}~{k}", k + 1
        used.add(token)
        out.append(token)
    return out


# ------------------------------------------------------------------------------------------------ time
def to_timestamp(value: str | int | float | datetime) -> int:
    """UTC unix seconds of a date (``"2017-10-01"``, ISO datetime, datetime or number). Naive means UTC."""
    if isinstance(value, int | float | np.integer | np.floating):
        return int(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(f"Cannot parse date {value!r}: use YYYY-MM-DD or an ISO datetime.") from err
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def format_timestamp(ts: float | None) -> str | None:
    """ISO 8601 UTC string of unix seconds (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=UTC).isoformat().replace("+00:00", "Z")


def shift_years(ts: int, years: int) -> int:
    """Same UTC calendar date and time ``years`` later (negative: earlier); 29 Feb becomes 28 Feb."""
    d = datetime.fromtimestamp(ts, tz=UTC)
    try:
        shifted = d.replace(year=d.year + years)
    except ValueError:
        shifted = d.replace(year=d.year + years, day=28)
    return int(shifted.timestamp())


def time_window_mask(
    timestamps: np.ndarray | pd.Series, start: float | None, end: float | None
) -> np.ndarray:
    """Boolean mask of ``start <= t <= end`` (both inclusive, as in D3); ``None`` means unbounded."""
    ts = np.asarray(timestamps, dtype=np.float64)
    mask = np.ones(len(ts), dtype=bool)
    if start is not None:
        mask &= ts >= start
    if end is not None:
        mask &= ts <= end
    return mask


# ---------------------------------------------------------------------------------------------- k-core
def kcore_filter(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until none is left.

    Counts interactions (repeated user-item pairs count each time, as D3 counts reviews). The k-core is
    unique, so removing users and items in the same pass (D3) or alternately gives the same result.
    Row order is preserved.
    """
    if k <= 1 or inter.empty:
        return inter
    users, _ = pd.factorize(inter["user_id"])
    items, _ = pd.factorize(inter["item_id"])
    keep = np.ones(len(inter), dtype=bool)
    while True:
        u_count = np.bincount(users[keep], minlength=users.max() + 1)
        i_count = np.bincount(items[keep], minlength=items.max() + 1)
        ok = keep & (u_count[users] >= k) & (i_count[items] >= k)
        if (ok == keep).all():
            break
        keep = ok
    return inter[keep]


@dataclass(frozen=True)
class WindowResult:
    """Interactions after the time window and the k-core, and the window actually used."""

    inter: pd.DataFrame
    start: int | None
    end: int | None
    years_back: int


def window_and_kcore(
    inter: pd.DataFrame, start: int | None, end: int | None, *, k: int, min_items: int = 0
) -> WindowResult:
    """Time window + k-core, moving ``start`` back one year at a time while fewer than ``min_items`` remain.

    The item count is taken *after* the title filter (done by the caller beforehand) and the k-core, as in
    D3 (its check inside the k-core loop fires iff the final count is low, since counts only decrease).
    D3 stops going back at 1996; we stop once ``start`` is at or before the earliest interaction, where an
    earlier start cannot change anything, and return that window even if it is still below ``min_items``.
    """
    earliest = float(inter["timestamp"].min()) if len(inter) else 0.0
    years_back = 0
    current = start
    while True:
        kept = kcore_filter(inter[time_window_mask(inter["timestamp"], current, end)], k)
        n_items = kept["item_id"].nunique()
        if start is None or n_items >= min_items or current <= earliest:
            return WindowResult(kept, current, end, years_back)
        years_back += 1
        current = shift_years(start, -years_back)


def sample_users(inter: pd.DataFrame, amount: float, seed: int) -> pd.DataFrame:
    """Keep a seeded random subset of users: ``0 < amount < 1`` is a fraction, ``amount >= 1`` a count.

    User ids are sorted before drawing, so the subset depends only on the seed and the user set, not on
    the file order (CETRec samples 1/10 of ML-1M). Applied after the title filter, before the k-core.
    """
    users = np.sort(inter["user_id"].unique().astype(str))
    if amount <= 0:
        raise ValueError(f"sample_users must be > 0 (a fraction in (0, 1) or a count), got {amount}.")
    n = max(1, round(amount * len(users))) if amount < 1 else min(int(amount), len(users))
    chosen = np.random.default_rng(seed).choice(len(users), size=n, replace=False)
    return inter[inter["user_id"].isin(set(users[chosen]))]


# -------------------------------------------------------------------------------------------- samples
def build_samples(inter: pd.DataFrame, max_history: int = 10, min_history: int = 1) -> pd.DataFrame:
    """One sample per interaction at position >= ``min_history`` of its user's time-ordered list.

    Each user's interactions are sorted by (timestamp, original row order), stably as Python's ``sorted``
    in D3. The history is the previous <= ``max_history`` items, oldest first, space separated.
    Columns: ``user_id, item_id_list, item_id, timestamp, history_length, user_order, position`` where
    ``user_order`` is the user's first appearance in ``inter`` (D3's dict order) and ``position`` the
    target's index in the user's sequence; both serve as deterministic tie-breaks of the global split.
    """
    if min_history < 0 or max_history < 1 or max_history < min_history:
        raise ValueError(
            f"Need 0 <= min_history <= max_history and max_history >= 1 (got min_history={min_history}, "
            f"max_history={max_history})."
        )
    columns = ["user_id", "item_id_list", "item_id", "timestamp", "history_length", "user_order", "position"]
    if inter.empty:
        return pd.DataFrame(columns=columns)
    items_raw = inter["item_id"].astype(str)
    bad = items_raw[items_raw.str.contains(r"\s", regex=True)]
    if len(bad):
        raise ValueError(
            f"Item tokens must not contain whitespace (e.g. {bad.iloc[0]!r}); use make_tokens()."
        )
    user_order, _ = pd.factorize(inter["user_id"], sort=False)
    ts = inter["timestamp"].to_numpy(dtype=np.float64)
    order = np.lexsort((np.arange(len(inter)), ts, user_order))
    u_sorted = user_order[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    lengths = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, lengths)
    items = items_raw.to_numpy(dtype=object)[order]
    rows = np.flatnonzero(position >= min_history)
    hist_len = np.minimum(position[rows], max_history)
    histories = [" ".join(items[r - h : r]) for r, h in zip(rows.tolist(), hist_len.tolist())]
    return pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).to_numpy(dtype=object)[order][rows],
            "item_id_list": histories,
            "item_id": items[rows],
            "timestamp": ts[order][rows],
            "history_length": hist_len,
            "user_order": u_sorted[rows],
            "position": position[rows],
        },
        columns=columns,
    )


def split_sizes(n: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """Sizes of the chronological split: ``n_train = floor(n*r0)``, ``n_valid = floor(n*(r0+r1)) - n_train``.

    Ratios are normalised and taken as exact decimals (``0.8`` is 4/5), so this equals D3's
    ``int(n*0.8)`` / ``int(n*0.9)`` cuts; the test split gets the remainder.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, e.g. (0.8, 0.1, 0.1); got {ratios}.")
    fr = [Fraction(str(r)) for r in ratios]
    total = sum(fr)
    n_train = math.floor(n * fr[0] / total)
    n_valid = math.floor(n * (fr[0] + fr[1]) / total) - n_train
    return n_train, n_valid, n - n_train - n_valid


def chrono_split(
    samples: pd.DataFrame, ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Global chronological split of samples into train/valid/test.

    Samples are sorted by target timestamp; ties are broken by ``user_order`` (first appearance of the
    user in the interactions, D3's order) then ``position``, so every valid/test target is at least as late
    as every train target. Sizes follow :func:`split_sizes`.
    """
    keys = [samples["timestamp"].to_numpy(dtype=np.float64)]
    tie = [samples[c].to_numpy() for c in ("position", "user_order") if c in samples]
    order = np.lexsort(tuple(tie) + tuple(keys))
    ordered = samples.iloc[order].reset_index(drop=True)
    n_train, n_valid, _ = split_sizes(len(ordered), ratios)
    return (
        ordered.iloc[:n_train].reset_index(drop=True),
        ordered.iloc[n_train : n_train + n_valid].reset_index(drop=True),
        ordered.iloc[n_train + n_valid :].reset_index(drop=True),
    )


SPLIT_PROTOCOLS = ("global_time", "leave_one_out")


def check_split_protocol(split: object) -> str:
    """The one validation of ``split_protocol`` (config key and ``prepare --split``)."""
    if split not in SPLIT_PROTOCOLS:
        raise ValueError(
            f"split_protocol={split!r} is unknown: use global_time (D3's chronological 8:1:1 cut, the default) "
            "or leave_one_out (each user's last sample to test, second-last to validation)."
        )
    return str(split)


def leave_one_out_split(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Leave-one-out split (RecBole's sequential setting, LC-Rec, TIGER): per user, the sample with the last
    target goes to test, the second-last to validation, the rest to train.

    "Last" is the target's ``position`` in the user's time-ordered sequence (:func:`build_samples`), so ties
    in timestamps follow the raw-file order as everywhere else. A user with fewer than 3 samples keeps them
    all in train (a validation and a test sample would leave no training sample). Each split is in the
    global order of :func:`chrono_split` (target time, user's first appearance, position).
    """
    keys = [samples["timestamp"].to_numpy(dtype=np.float64)]
    tie = [samples[c].to_numpy() for c in ("position", "user_order") if c in samples]
    ordered = samples.iloc[np.lexsort(tuple(tie) + tuple(keys))].reset_index(drop=True)
    users = ordered["user_id"].astype(str)
    # rank 0 = the user's last target, 1 = second-last (by position in the user's sequence)
    rank_from_end = ordered.groupby(users, sort=False)["position"].rank(method="first", ascending=False) - 1
    n_user = users.map(users.value_counts()).to_numpy()
    enough = n_user >= 3
    test = enough & (rank_from_end.to_numpy() == 0)
    valid = enough & (rank_from_end.to_numpy() == 1)
    train = ~(test | valid)
    return tuple(ordered[m].reset_index(drop=True) for m in (train, valid, test))  # type: ignore[return-value]
