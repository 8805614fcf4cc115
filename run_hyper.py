"""Hyper-parameter tuning of any model with RecBole's own ``HyperTuning`` (hyperopt).

    python run_hyper.py --model=LLMGenRec --dataset=ml-100k --params_file=properties/hyper/LLMGenRec-cetrec.hyper \\
        --objective=cetrec --algo=exhaustive
    python run_hyper.py --model=SASRec --dataset=ml-100k --params_file=properties/hyper/SASRec.hyper --epochs=5

Params file, one parameter a line (RecBole's format; ``#`` starts a comment):

    lambda choice [0.01, 0.05, 0.1]
    learning_rate loguniform -9.2, -4.6      # bounds are natural logs, as in hyperopt: e^-9.2 .. e^-4.6
    dropout_prob uniform 0.1 0.5
    hidden_size quniform 32 128 32

``exhaustive`` tries every combination of ``choice`` parameters (the papers' grids); ``random`` and
``bayes`` (TPE) draw ``--max_evals`` trials and also accept continuous ranges. Each trial is one full
run (train, early stopping on the validation score, test) whose results JSON is saved as usual. The
best trial is the one with the best validation score in the direction RecBole uses: larger for a metric
such as NDCG@10, smaller when ``valid_metric: loss`` (LLMGenRec's default, ``valid_metric_bigger: False``).
Every other ``--key=value`` is a fixed override for all trials. Writes ``<output>/hyper_trials.csv``,
``hyper_trials.md`` and RecBole's ``hyper_result.txt``.

Selecting LLMGenRec trials on the validation loss only works for keys that leave the loss's meaning alone
(``lambda``, ``learning_rate``, ...): decoding-only keys (``ig_alpha``, ``num_beams``, ...) cannot change
it (refused), and token-weight keys (``beta``, ``beta_prime``) change its scale (warned); select those on
a decoded metric with ``--valid_metric=NDCG@10 --valid_metric_bigger=True``.
"""

import sys
from typing import Any

from recbole_llm.tuning import build_parser, tune
from recbole_llm.utils.errors import run_cli


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """A user mistake ends in one line and exit code 2 (``--debug``: with the traceback)."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None = None) -> dict[str, Any]:
    args, rest = build_parser(__doc__).parse_known_args(sys.argv[1:] if argv is None else argv)
    # RecBole's Config reads every --key=value of sys.argv: leave it only the fixed overrides.
    sys.argv = [sys.argv[0], *rest]
    return tune(
        args.model,
        args.dataset,
        args.params_file,
        fixed_args=rest,
        config_files=args.config_files.split() if args.config_files else None,
        algo=args.algo,
        max_evals=args.max_evals,
        early_stop=args.early_stop,
        output=args.output,
    )


if __name__ == "__main__":
    main()
