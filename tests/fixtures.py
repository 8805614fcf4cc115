"""A tiny prepared dataset in the shared-split format, written by tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

TITLES = {
    "i1": "The Matrix (1999)",
    "i2": "Toy Story (1995)",
    "i3": "Heat (1995)",
    "i4": 'Say "Anything" (1989)',
    "i5": "Amélie (2001)",
    "i6": "Heat (1995)",  # a duplicate title on purpose
    "i7": "Alien (1979)",
    "i8": "Aliens (1986)",
    "i9": "Brazil (1985)",
    "i10": "Fargo (1996)",
    "i11": "Casablanca (1942)",
    "i12": "Vertigo (1958)",
}


def write_prepared(
    root: Path, name: str = "tiny", n_users: int = 12, seq_len: int = 7, split: str = "global_time"
) -> dict[str, list[tuple]]:
    """Write ``root/name`` with users cycling through the catalogue; return the (user, history, target) rows.

    ``split="leave_one_out"`` writes ``root/leave_one_out/name`` with each user's last sample in test and
    second-last in valid (where ``split_protocol: leave_one_out`` reads it).
    """
    folder = (root if split == "global_time" else root / split) / name
    folder.mkdir(parents=True, exist_ok=True)
    items = list(TITLES)
    samples = []
    t = 0
    for u in range(n_users):
        seq = [items[(u + 3 * j) % len(items)] for j in range(seq_len)]
        for pos in range(1, seq_len):
            t += 1
            samples.append((f"u{u}", tuple(seq[max(0, pos - 10) : pos]), seq[pos], float(t)))
    samples.sort(key=lambda s: s[3])
    n = len(samples)
    n_train, n_valid = int(n * 0.8), int(n * 0.9) - int(n * 0.8)
    splits = {
        "train": samples[:n_train],
        "valid": samples[n_train : n_train + n_valid],
        "test": samples[n_train + n_valid :],
    }
    if split == "leave_one_out":  # each user's targets are at positions 1..seq_len-1, in time order
        last = {u: h for u, h, _, _ in samples}  # the longest history = the last sample
        rank = {(u, len(h)): (len(last[u]) - len(h)) for u, h, _, _ in samples}
        pick = {0: "test", 1: "valid"}
        splits = {"train": [], "valid": [], "test": []}
        for s in samples:
            splits[pick.get(rank[(s[0], len(s[1]))], "train")].append(s)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\n"
    for part, rows in splits.items():
        lines = [f"{u}\t{' '.join(h)}\t{i}\t{ts}\n" for u, h, i, ts in rows]
        (folder / f"{name}.{part}.inter").write_text(header + "".join(lines))
    item_lines = "".join(f"{i}\t{title}\n" for i, title in TITLES.items())
    (folder / f"{name}.item").write_text("item_id:token\ttitle:token\n" + item_lines, encoding="utf-8")
    inter = "".join(f"{u}\t{i}\t{ts}\n" for u, _, i, ts in samples)
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + inter)
    meta = {
        "format_version": 1,
        "name": name,
        "protocol": {"split": split},
        "category": {"singular": "movie", "plural": "movies"},
        "source": "test fixture",
    }
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return {k: [(u, h, i) for u, h, i, _ in v] for k, v in splits.items()}
