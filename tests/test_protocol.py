"""Unit tests of the data protocol (docs/design.md §1) on hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recbole_llm.data.protocol import (
    NA_STRINGS,
    build_samples,
    chrono_split,
    clean_title,
    count_shared_titles,
    kcore_filter,
    make_tokens,
    sample_users,
    shift_years,
    split_sizes,
    time_window_mask,
    to_timestamp,
    window_and_kcore,
)

T0 = 1506816000  # 2017-10-01T00:00:00Z
T_END = 1541030400  # 2018-11-01T00:00:00Z
DAY = 86400


def inter(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df["user_id"], df["item_id"]))


# ------------------------------------------------------------------------------------------------ titles
def d3_clean(meta: dict) -> str | None:
    """D3's process.py title rule, transcribed, as the reference."""
    if ("title" not in meta) or (meta["title"].find("<span id") > -1):
        return None
    t = meta["title"].replace("&quot;", '"').replace("&amp;", "&").strip(" ").strip('"')
    return t if len(t) > 1 and len(t.split(" ")) <= 20 else None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (123, None),
        ("", None),
        ("   ", None),
        ("A", None),
        ("AB", "AB"),
        ('<span id="a">Halo</span>', None),
        ("&quot;Halo&quot; 3", 'Halo" 3'),
        ('  "Quoted Title"  ', "Quoted Title"),
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("&amp;quot;x", "&quot;x"),
        ("It&#39;s", "It's"),
        ("Heroes&paradise", "Heroes&paradise"),
        ("a\tb\n c\r\nd\u00a0e", "a b c d e"),
        (" ".join(["w"] * 20), " ".join(["w"] * 20)),
        (" ".join(["w"] * 21), None),
        ("None", None),
        ("N/A", None),
        ("Pokémon Sun", "Pokémon Sun"),
    ],
)
def test_clean_title_cases(raw, expected):
    assert clean_title(raw) == expected


def test_clean_title_matches_d3_on_ordinary_titles():
    titles = [
        "Super Mario Odyssey",
        "&quot;Halo&quot; 3",
        'Call of Duty: "WWII"',
        "Sonic &amp; Knuckles",
        " Spaced ",
        "X",
        '"""',
        "<span id='x'>Nope</span>",
        " ".join(str(i) for i in range(21)),
    ]
    for t in titles:
        assert clean_title(t) == d3_clean({"title": t}), t
    assert clean_title(None) == d3_clean({}) is None


def test_clean_title_keep_quotes_option():
    assert (
        clean_title('"Great Performances" Cats (1998)', strip_quotes=False)
        == '"Great Performances" Cats (1998)'
    )
    assert clean_title('"Great Performances" Cats (1998)') == 'Great Performances" Cats (1998)'


def test_na_strings_cover_pandas_defaults():
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(STR_NA_VALUES) <= NA_STRINGS
    assert all(clean_title(s) is None for s in NA_STRINGS)


def test_count_shared_titles():
    assert count_shared_titles({"a": "X", "b": "X", "c": "Y", "d": "Z", "e": "Z", "f": "Z"}) == (2, 5)
    assert count_shared_titles({"a": "X"}) == (0, 0)


def test_make_tokens():
    assert make_tokens(["a b", "a_b", "None", "x", " a  b "]) == ["a_b~2", "a_b", "_None", "x", "a_b~3"]
    assert make_tokens(["[PAD]", "", "q\tr"]) == ["_[PAD]", "_", "q_r"]
    with pytest.raises(ValueError, match="distinct"):
        make_tokens(["a", "a"])


# -------------------------------------------------------------------------------------------------- time
def test_timestamps_are_utc():
    assert to_timestamp("2017-10-01") == T0
    assert to_timestamp("2018-11-01") == T_END
    assert to_timestamp("2017-10-01T02:00:00+02:00") == T0
    assert shift_years(T0, -1) == T0 - 365 * DAY
    assert shift_years(to_timestamp("2016-02-29"), -1) == to_timestamp("2015-02-28")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        to_timestamp("Oct 2017")


def test_window_boundaries_inclusive():
    ts = np.array([T0 - 1, T0, T0 + 1, T_END - 1, T_END, T_END + 1])
    assert time_window_mask(ts, T0, T_END).tolist() == [False, True, True, True, True, False]
    assert time_window_mask(ts, None, None).all()
    assert time_window_mask(ts, T0, None).tolist() == [False, True, True, True, True, True]


def test_window_backs_off_one_year_at_a_time():
    rows = [
        ("u1", "A", T0 + DAY),
        ("u2", "B", T0 + 2 * DAY),
        ("u3", "C", T0 - 300 * DAY),  # 2016-12: inside [2016-10-01, end]
        ("u4", "D", T0 - 600 * DAY),  # 2016-02: inside [2015-10-01, end]
        ("u5", "E", T_END + DAY),  # after the end: never kept
    ]
    df = inter(rows)
    # enough items already: window unchanged
    res = window_and_kcore(df, T0, T_END, k=1, min_items=2)
    assert (res.start, res.years_back) == (T0, 0)
    assert sorted(res.inter["item_id"]) == ["A", "B"]
    # 3 items needed: one year back is enough
    res = window_and_kcore(df, T0, T_END, k=1, min_items=3)
    assert (res.start, res.years_back) == (to_timestamp("2016-10-01"), 1)
    assert sorted(res.inter["item_id"]) == ["A", "B", "C"]
    # unreachable: goes back until the start is before the earliest interaction (2015-10-01), then stops
    res = window_and_kcore(df, T0, T_END, k=1, min_items=100)
    assert (res.start, res.years_back) == (to_timestamp("2015-10-01"), 2)
    assert sorted(res.inter["item_id"]) == ["A", "B", "C", "D"]


def test_window_counts_items_after_kcore():
    # inside the window: A and B twice (2-core ok), E once (dropped by the 2-core) -> 2 items < 3
    rows = [
        ("u1", "A", T0),
        ("u1", "B", T0 + 1),
        ("u2", "A", T0 + 2),
        ("u2", "B", T0 + 3),
        ("u2", "E", T0 + 4),
    ]
    rows += [("u3", "C", T0 - 100 * DAY), ("u3", "A", T0 - 99 * DAY), ("u1", "C", T0 - 98 * DAY)]
    res = window_and_kcore(inter(rows), T0, T_END, k=2, min_items=3)
    assert res.years_back == 1
    assert sorted(set(res.inter["item_id"])) == ["A", "B", "C"]
    assert len(res.inter) == 7
    # without the k-core the window already holds 3 items
    assert window_and_kcore(inter(rows), T0, T_END, k=1, min_items=3).years_back == 0


# ------------------------------------------------------------------------------------------------ k-core
def test_kcore_iterates_until_stable():
    rows = [
        ("u1", "A", 1),
        ("u1", "B", 2),
        ("u2", "A", 3),
        ("u2", "B", 4),
        ("u3", "C", 5),  # u3 has 1 interaction -> removed in pass 1
        ("u4", "C", 6),
        ("u4", "D", 7),  # D has 1 interaction -> removed in pass 1; then u4 has 1 -> removed in pass 2
    ]
    out = kcore_filter(inter(rows), 2)
    assert pairs(out) == [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B")]
    # a single pass would have kept u4-C: it is the iteration that removes it
    df = inter(rows)
    uc, ic = df["user_id"].map(df["user_id"].value_counts()), df["item_id"].map(df["item_id"].value_counts())
    assert ("u4", "C") in pairs(df[(uc >= 2) & (ic >= 2)])


def test_kcore_counts_repeats_and_k1_is_identity():
    rows = [("u1", "A", 1), ("u1", "A", 2), ("u2", "B", 3)]
    assert pairs(kcore_filter(inter(rows), 2)) == [("u1", "A"), ("u1", "A")]
    assert len(kcore_filter(inter(rows), 1)) == 3


def test_sample_users_seeded_and_order_free():
    rows = [(f"u{u}", "A", t) for u in range(10) for t in range(2)]
    a = sample_users(inter(rows), 0.3, seed=7)
    b = sample_users(inter(rows[::-1]), 0.3, seed=7)
    assert a["user_id"].nunique() == 3
    assert set(a["user_id"]) == set(b["user_id"])
    assert sample_users(inter(rows), 4, seed=7)["user_id"].nunique() == 4
    with pytest.raises(ValueError, match="> 0"):
        sample_users(inter(rows), 0, seed=7)


# ----------------------------------------------------------------------------------------------- samples
def test_build_samples_truncates_history_to_max():
    rows = [("u", f"i{n}", 100 + n) for n in range(12)]
    s = build_samples(inter(rows), max_history=10, min_history=1)
    assert len(s) == 11
    assert s["item_id"].tolist() == [f"i{n}" for n in range(1, 12)]
    assert s["item_id_list"].iloc[0] == "i0"
    assert s["item_id_list"].iloc[9] == " ".join(f"i{n}" for n in range(10))  # target i10: 10 previous
    assert s["item_id_list"].iloc[10] == " ".join(f"i{n}" for n in range(1, 11))  # target i11: i0 dropped
    assert s["history_length"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]
    assert s["timestamp"].tolist() == [100.0 + n for n in range(1, 12)]


def test_build_samples_min_history_and_sort_with_ties():
    # file order is not time order; t=5 twice keeps the file order (x before y)
    rows = [
        ("v", "z", 9),
        ("u", "b", 20),
        ("u", "a", 10),
        ("v", "x", 5),
        ("v", "y", 5),
        ("u", "c", 30),
        ("u", "d", 40),
    ]
    s = build_samples(inter(rows), max_history=2, min_history=2)
    got = list(zip(s["user_id"], s["item_id_list"], s["item_id"], s["position"], s["user_order"]))
    assert got == [("v", "x y", "z", 2, 0), ("u", "a b", "c", 2, 1), ("u", "b c", "d", 3, 1)]


def test_build_samples_validates():
    with pytest.raises(ValueError, match="min_history"):
        build_samples(inter([("u", "a", 1)]), max_history=2, min_history=3)
    with pytest.raises(ValueError, match="whitespace"):
        build_samples(inter([("u", "a b", 1), ("u", "c", 2)]))


# ------------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, (0, 0, 0)), (5, (4, 0, 1)), (7, (5, 1, 1)), (10, (8, 1, 1)), (12, (9, 1, 2)), (19, (15, 2, 2))],
)
def test_split_sizes_hand_computed(n, sizes):
    assert split_sizes(n) == sizes


def test_split_sizes_equal_d3_rounding():
    for n in range(3000):
        assert split_sizes(n) == (int(n * 0.8), int(n * 0.9) - int(n * 0.8), n - int(n * 0.9))
    assert split_sizes(10, (8, 1, 1)) == (8, 1, 1)
    with pytest.raises(ValueError, match="three"):
        split_sizes(10, (0.9, 0.1))


def test_chrono_split_order_and_tie_break():
    s = pd.DataFrame(
        {
            "user_id": list("abcdefghij"),
            "item_id_list": ["h"] * 10,
            "item_id": [f"t{i}" for i in range(10)],
            "timestamp": [50, 10, 40, 30, 30, 20, 90, 70, 60, 80],
            "user_order": [0, 1, 2, 4, 3, 5, 6, 7, 8, 9],
            "position": [1] * 10,
        }
    )
    train, valid, test = chrono_split(s)
    assert (len(train), len(valid), len(test)) == (8, 1, 1)
    # ts 30 tie: user_order 3 (user e) before 4 (user d)
    assert train["user_id"].tolist() == ["b", "f", "e", "d", "c", "a", "i", "h"]
    assert valid["user_id"].tolist() == ["j"] and test["user_id"].tolist() == ["g"]
    assert train["timestamp"].max() <= valid["timestamp"].min() <= test["timestamp"].min()


def test_chrono_split_on_built_samples_guarantees_order():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(30)}", int(rng.integers(1000))) for u in range(40) for _ in range(6)]
    s = build_samples(inter(rows), max_history=10)
    train, valid, test = chrono_split(s)
    assert (len(train), len(valid), len(test)) == split_sizes(len(s)) == (160, 20, 20)
    assert train["timestamp"].max() <= valid["timestamp"].min()
    assert valid["timestamp"].max() <= test["timestamp"].min()
