"""Train and evaluate any model on a prepared dataset, RecBole style.

    python run_recbole_llm.py --model=SASRec --dataset=ml-100k
    python run_recbole_llm.py --model=LLMGenRec --objective=igd --dataset=amazon-games
    python run_recbole_llm.py --model=LLMGenRec --config_files="my.yaml other.yaml" --learning_rate=5e-5

Every ``--key=value`` overrides the YAML files in ``properties/`` exactly as in ``run_recbole.py``.
"""

import argparse

from recbole_llm.quick_start import run_recbole_llm

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", "-m", type=str, default="SASRec", help="LLMGenRec, SASRec, GRU4Rec, Caser, ..."
    )
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="a prepared dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args()
    config_files = args.config_files.split() if args.config_files else None
    run_recbole_llm(model=args.model, dataset=args.dataset, config_file_list=config_files)
