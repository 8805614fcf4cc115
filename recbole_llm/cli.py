"""Train and evaluate any model on a prepared dataset, RecBole style.

    recbole-llm --model=SASRec            # the console command; or: python run_recbole_llm.py ...
    python run_recbole_llm.py --model=SASRec --dataset=ml-100k
    python run_recbole_llm.py --model=LLMGenRec --objective=igd --dataset=amazon-games
    python run_recbole_llm.py --model=LLMGenRec --config_files="my.yaml other.yaml" --learning_rate=5e-5

Every ``--key=value`` overrides the YAML files in ``properties/`` exactly as in ``run_recbole.py``.

An interrupted LLMGenRec run (killed, crashed, or stopped by SIGTERM / Ctrl-C, which save the
current step first) continues from its last checkpoint with one flag, the run folder it printed:

    python run_recbole_llm.py --resume=saved/LLMGenRec-amazon-games-Nov-23-2026_19-45-54

A finished run is decoded again with other decoding keys (decoder, ig_alpha, num_beams, ...) without
retraining, and saved as a new results JSON:

    python run_recbole_llm.py --evaluate=results/ml-100k/LLMGenRec-igd-d3-<time>.json --ig_alpha=0

Every run ends with its metrics next to the earlier runs of its results folder on the same test samples.
"""

import argparse
import sys
from logging import Logger, getLogger
from pathlib import Path

from recbole.utils import set_color

from recbole_llm.quick_start import run_recbole_llm
from recbole_llm.reporting.compare import same_split_report
from recbole_llm.trainer import TrainingStopped
from recbole_llm.utils.errors import UserError, run_cli


def log_same_split_report(results_file: str, logger: Logger | None = None) -> None:
    """Show this run next to earlier runs on the same test samples (e.g. SASRec); never fail the run."""
    logger = logger or getLogger()
    try:
        report = same_split_report(results_file)
    except Exception as err:  # a broken neighbour file must not cost the finished run
        logger.warning(f"could not compare with earlier runs in {Path(results_file).parent}: {err}")
        return
    if report:
        logger.info(set_color("same test samples as earlier runs", "yellow") + ":\n" + report)


def main(argv: list[str] | None = None) -> None:
    """``recbole-llm ...`` and ``python run_recbole_llm.py ...``: one entry point, one behaviour; a user
    mistake ends in ``error: <message>`` and exit code 2 (``--debug``: with the traceback)."""
    run_cli(_main, argv)


def parse_seeds(text: str) -> list[int]:
    """``--seeds=2020,2021``: distinct integers, in the given order."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--seeds={text!r}: give comma-separated integers, e.g. --seeds=2020,2021,2022."
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds={text!r}: give one or more distinct integers, e.g. --seeds=2020,2021,2022.")
    return seeds


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--x=v`` or ``--x v``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            out.append(arg)
    return out


def _run_seeds(seeds: list[int], args: argparse.Namespace) -> None:
    """One run per seed, each exactly the command as given plus ``--seed=<s>`` (RecBole reads sys.argv)."""
    if args.resume is not None or args.evaluate is not None:
        raise UserError("--seeds repeats a training run: it cannot be combined with --resume or --evaluate.")
    rest = _without(sys.argv[1:], "--seeds")
    if any(a == "--seed" or a.startswith("--seed=") for a in rest):
        raise UserError("--seeds and --seed were both given: keep --seeds (one run per seed).")
    config_files = args.config_files.split() if args.config_files else None
    files = []
    for seed in seeds:
        sys.argv = [sys.argv[0], *rest, f"--seed={seed}"]
        getLogger().info(set_color(f"seed {seed} ({len(files) + 1} of {len(seeds)})", "yellow"))
        try:
            result = run_recbole_llm(
                model=args.model or "SASRec", dataset=args.dataset or "ml-100k", config_file_list=config_files
            )
        except TrainingStopped as stop:
            print(stop, file=sys.stderr)
            sys.exit(stop.exit_code)
        files.append(result["results_file"])
    log_same_split_report(files[-1])
    for seed, file in zip(seeds, files, strict=True):
        print(f"seed {seed}: {file}")


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--model", "-m", type=str, default=None, help="LLMGenRec, SASRec, GRU4Rec, Caser, ... [SASRec]"
    )
    parser.add_argument("--dataset", "-d", type=str, default=None, help="a prepared dataset name [ml-100k]")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument(
        "--resume",
        type=str,
        default=None,
        help="run folder (saved/<model>-<dataset>-<time>) of an interrupted run: continue it exactly, "
        "with its recorded model, dataset and settings",
    )
    parser.add_argument(
        "--evaluate",
        type=str,
        default=None,
        help="results JSON or run folder of a finished run: decode its best checkpoint again with the "
        "decoding keys given now (--decoder, --ig_alpha, ...), without training",
    )
    parser.add_argument(
        "--seeds",
        type=str,
        default=None,
        help="comma-separated seeds, e.g. 2020,2021,2022: the same configuration once per seed, each a full "
        "run with its own results JSON (compare shows them as one row, mean ± std)",
    )
    if argv is not None:  # RecBole reads the --key=value overrides from sys.argv itself
        sys.argv = [sys.argv[0], *argv]
    args, _ = parser.parse_known_args()
    if args.seeds is not None:
        return _run_seeds(parse_seeds(args.seeds), args)
    config_files = args.config_files.split() if args.config_files else None
    if args.evaluate is not None:
        model, dataset, extra = args.model, args.dataset, {"evaluate": args.evaluate}
    elif args.resume is not None:
        model, dataset, extra = args.model, args.dataset, {"resume": args.resume}
    else:
        model, dataset, extra = args.model or "SASRec", args.dataset or "ml-100k", None
    try:
        result = run_recbole_llm(
            model=model, dataset=dataset, config_file_list=config_files, config_dict=extra
        )
    except TrainingStopped as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    log_same_split_report(result["results_file"])


if __name__ == "__main__":  # python -m recbole_llm.cli (what the study command and torchrun -m start)
    main()
