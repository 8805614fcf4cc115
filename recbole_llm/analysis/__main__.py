"""Command line of the analyses: each writes CSV (+ Markdown for compare) and one PNG.

    python -m recbole_llm.analysis compare results/ml-100k --base SASRec
    python -m recbole_llm.analysis popularity results/ml-100k/LLMGenRec-sft-d3-*.json results/ml-100k/LLMGenRec-cft-d3-*.json
    python -m recbole_llm.analysis temporal results/ml-100k/LLMGenRec-cetrec-d3-*.json --max-users 200
    python -m recbole_llm.analysis ig-stats results/ml-100k/LLMGenRec-igd-d3-*.json
    python -m recbole_llm.analysis zero-ig ml-100k ml-1m
    python -m recbole_llm.analysis ig-loss saved/LLMGenRec-ml-100k-*/
    python -m recbole_llm.analysis metrics results/ml-100k/SASRec-*.json --k 5 10

RUN arguments are results JSONs (results/<dataset>/<run>-<time>.json) or LLM run folders (saved/...).
Outputs go to --output, by default <results_dir>/<dataset>/analysis/.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from recbole_llm.reporting.labels import DEFAULT_METRICS
from recbole_llm.utils.config_access import parse_value
from recbole_llm.utils.errors import run_cli

# command -> the function that runs it, loaded when the command runs (as get_model loads a model): the
# model analyses import the whole training stack (seconds), which ``compare`` never needs.
COMMANDS: dict[str, str] = {
    "compare": "recbole_llm.reporting.compare:run_compare",
    "popularity": "recbole_llm.analysis.popularity:run_popularity",
    "temporal": "recbole_llm.analysis.temporal:run_temporal",
    "ig-stats": "recbole_llm.analysis.ig_stats:run_ig_stats",
    "zero-ig": "recbole_llm.analysis.ig_stats:run_zero_ig",
    "ig-loss": "recbole_llm.analysis.ig_stats:run_ig_loss",
    "metrics": "recbole_llm.analysis.rankings:run_metrics",
}


def command(name: str) -> Callable[..., dict[str, Any]]:
    """The function behind a subcommand (see :data:`COMMANDS`)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. --set decode_batch_size=16), got {pair!r}.")
        out[key.strip()] = parse_value(value)
    return out


def _run_options(p: argparse.ArgumentParser, default_k: str) -> None:
    p.add_argument("runs", nargs="+", help="results JSONs or run folders of finished runs")
    p.add_argument("--k", type=int, default=None, help=f"length of the ranked lists ({default_k})")
    p.add_argument("--max-users", type=int, default=None, help="seeded sample of test users (default: all)")
    p.add_argument("--output", default=None, help="output folder (default <results_dir>/<dataset>/analysis)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override when reloading runs (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_llm.analysis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="one table (CSV + Markdown + PNG) of results JSONs")
    p.add_argument("results", nargs="+", help="results JSONs or folders holding them (e.g. results/ml-100k)")
    p.add_argument("--base", default=None, help="label or run name of the row improvements are relative to")
    p.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated (default %(default)s)"
    )
    p.add_argument("--all", action="store_true", help="keep every result, not only the newest per label")
    p.add_argument("--sort", default=None, help="sort rows by this metric, best first")
    p.add_argument("--output", default=None, help="output folder (default: the results folder)")
    p.add_argument(
        "--holm", action="store_true", help="Holm-correct the paired tests against --base over the rows"
    )

    p = sub.add_parser("popularity", help="popularity-group shares of the top-K lists (CFT Fig. 1/4)")
    _run_options(p, "default: max(topk)")
    p.add_argument("--groups", type=int, default=5, help="number of popularity groups (default 5, as CFT)")
    p.add_argument("--grouping", choices=("items", "interactions"), default="items")

    p = sub.add_parser("temporal", help="metrics on reversed test histories (CETRec Fig. 4)")
    _run_options(p, "default: max(topk)")

    p = sub.add_parser(
        "ig-stats", help="zero-IG token share and entropy per decoding step (IGD Table 4, Fig. 1-3)"
    )
    _run_options(p, "default: max(topk)")

    p = sub.add_parser(
        "zero-ig", help="zero-IG title-token share of prepared datasets (IGD Table 4); no trained run needed"
    )
    p.add_argument("datasets", nargs="+", help="prepared dataset names (e.g. ml-100k ml-1m)")
    p.add_argument("--output", default=None, help="output folder (default <results_dir>/<dataset>/analysis)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override, e.g. --set llm_path=/models/qwen2",
    )

    p = sub.add_parser("ig-loss", help="token loss by IG group per epoch (IGD §4.2.1), from ig_loss.csv")
    p.add_argument("runs", nargs="+", help="run folders, results JSONs or ig_loss.csv files")
    p.add_argument("--output", default=None)

    p = sub.add_parser(
        "metrics", help="every metric (accuracy + beyond accuracy) recomputed from a run's saved rankings"
    )
    p.add_argument("runs", nargs="+", help="results JSONs, LLM run folders or rankings.jsonl files")
    p.add_argument("--k", type=int, nargs="+", default=None, help="cut-offs (default: the run's topk)")
    p.add_argument("--output", default=None, help="also write metrics.json into this folder")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    # deferred: the config module imports RecBole, which --help does not need
    from recbole_llm.config import command_line_ignored

    with command_line_ignored():  # our options are no settings of the reloaded runs
        files = _run(args)
    for name, path in files.items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return files


def _run(args: argparse.Namespace) -> dict[str, Any]:
    run = command(args.command)
    if args.command == "compare":
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        files = run(args.results, args.output, args.base, metrics, args.all, args.sort, holm=args.holm)
    elif args.command == "popularity":
        files = run(
            args.runs, args.output, args.k, args.groups, args.grouping, args.max_users, _overrides(args.set)
        )
    elif args.command in ("temporal", "ig-stats"):
        files = run(args.runs, args.output, args.k, args.max_users, _overrides(args.set))
    elif args.command == "zero-ig":
        files = run(args.datasets, args.output, _overrides(args.set))
    elif args.command == "metrics":
        files = run(args.runs, args.k, args.output)
    else:
        files = run(args.runs, args.output)
    return files


if __name__ == "__main__":
    run_cli(main)
