"""Train and evaluate any model, RecBole style: the same as the ``recbole-llm`` console command.

    python run_recbole_llm.py --model=LLMGenRec --objective=igd --dataset=amazon-games

See ``recbole_llm/cli.py`` (or ``--help``) for every flag.
"""

from recbole_llm.cli import log_same_split_report, main

__all__ = ["log_same_split_report", "main"]

if __name__ == "__main__":
    main()
