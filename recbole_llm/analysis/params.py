"""The parameters every analysis command takes (``python -m recbole_llm.analysis ...``), as type aliases."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Runs = Sequence[str | Path]  # results JSONs or run folders of finished runs
Folder = str | Path | None  # output folder; None: <results_dir>/<dataset>/analysis of the first run
Count = int | None  # k (None: the run's largest topk) or max_users (None: every test user)
Overrides = dict[str, Any] | None  # config keys set when the runs are reloaded
Written = dict[str, Path]  # what a command wrote, by name
