"""Test-wide settings (one torch thread per process) and the fixtures tests share.

The tests use tiny models, for which one thread is as fast as two, and several test processes
(subprocess resume tests) or other jobs may share the 2 CI cores: oversubscribed OpenMP threads slow
torch down by an order of magnitude (measured: 56 s vs 1.3 s for one property test).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from recbole_llm.utils.testing import tiny_model_dir  # noqa: E402
from tests.fixtures import write_prepared  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """One tiny random Llama (a normal HF folder, seed 0) for the whole session; tests only read it."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_path) -> tuple[Path, Path]:
    """``(root, model)``: the tiny prepared dataset in ``root/data`` (runs write ``saved/`` and ``results/``
    beside it, one root per test module) and the session's tiny model."""
    root = tmp_path_factory.mktemp("workspace")
    write_prepared(root / "data")
    return root, tiny_model_path
