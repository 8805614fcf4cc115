"""Several processes, one run: ``torchrun --nproc_per_node=2`` (gloo, CPU) trains and tests LLMGenRec into one
run folder and one results JSON, logs from rank 0 only, reaches the 1-process validation loss and the very
same test rankings, and a 2-process run stopped mid-epoch resumes (with 2 or 1 processes) to the same result.
RecBole's baselines refuse a multi-process launch with a one-line message naming the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_llm.utils.checkpoint import load_training_state
from recbole_llm.utils.rankings import read_rankings

REPO = Path(__file__).resolve().parent.parent

# 48 training samples in effective batches of 8 = 2 micro-batches of 4 (one per process): 6 optimizer steps
# per epoch, no sample skipped with 2 processes. Dropout 0: one and two processes then compute the same
# gradients (up to float summation order), so their weights, losses and rankings can be compared.
SETTINGS = {
    "epochs": 2,
    "train_batch_size": 8,
    "micro_batch_size": 4,
    "train_sample_num": 48,
    "eval_sample_num": 8,
    "checkpoint_steps": 2,
    "warmup_steps": 1,
    "learning_rate": 0.01,
    "dropout": 0.0,
    "stopping_step": 5,
    "mixed_precision": "no",
    "show_progress": False,
    "cpu_threads": 1,
}

# The child: the real CLI, recording the test rankings (rank 0's gathered lists) to RANKED_OUT; STOP_AT=n
# sends SIGTERM to rank 0 alone during optimizer step n + 1 (the launcher's signal reaching one process).
CHILD = r"""
import os, runpy, signal, sys
import torch
from recbole_llm.trainer import llm_trainer

original_evaluate = llm_trainer.LLMTrainer.evaluate

def evaluate(self, *args, **kwargs):
    result = original_evaluate(self, *args, **kwargs)
    if not self._validating and self.accelerator.is_main_process and os.environ.get("RANKED_OUT"):
        torch.save(self.last_ranked_items, os.environ["RANKED_OUT"])
    return result

llm_trainer.LLMTrainer.evaluate = evaluate
stop_at = int(os.environ.get("STOP_AT", "0"))
if stop_at:
    original_step = llm_trainer.LLMTrainer._micro_step
    sent = []

    def micro_step(self, *args, **kwargs):
        if self.global_step == stop_at and self.accelerator.is_main_process and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, *args, **kwargs)

    llm_trainer.LLMTrainer._micro_step = micro_step
sys.argv = ["run_recbole_llm.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["REPO"], "run_recbole_llm.py"), run_name="__main__")
"""


def _launch(workspace, name: str, procs: int, *args: str, env: dict | None = None, **extra):
    """Run the CLI in ``root/name`` with ``procs`` processes (torchrun for 2); return (code, output)."""
    root, model_dir = workspace
    cwd = root / name
    cwd.mkdir(exist_ok=True)
    (cwd / "child.py").write_text(CHILD)
    settings = {"data_path": root / "data", "llm_path": model_dir, **SETTINGS, **extra}
    argv = list(args) or [
        "--model=LLMGenRec",
        "--dataset=tiny",
        *(f"--{k}={v}" for k, v in settings.items()),
    ]
    launcher = [sys.executable]
    if procs > 1:  # a fresh port per launch: tests and other jobs never collide on torchrun's default
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    full_env = {
        **os.environ,
        "REPO": str(REPO),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "RANKED_OUT": str(cwd / "ranked.pt"),
        **(env or {}),
    }
    out = subprocess.run(
        [*launcher, str(cwd / "child.py"), *argv],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return out.returncode, out.stdout + out.stderr


def _results(workspace, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (workspace[0] / name / "results" / "tiny").glob("*.json")]


def _run_dirs(workspace, name: str) -> list[Path]:
    return sorted((workspace[0] / name / "saved").iterdir())


@pytest.fixture(scope="module")
def one_process(workspace):
    code, out = _launch(workspace, "one", 1)
    assert code == 0, out
    return _results(workspace, "one")[0], torch.load(workspace[0] / "one" / "ranked.pt")


@pytest.fixture(scope="module")
def two_processes(workspace):
    code, out = _launch(workspace, "two", 2)
    assert code == 0, out
    return out


def test_two_processes_one_run_folder_one_json_rank0_logs_same_loss_and_rankings(
    workspace, one_process, two_processes
):
    root = workspace[0]
    (result,) = _results(workspace, "two")  # exactly one results JSON
    (run_dir,) = _run_dirs(workspace, "two")  # exactly one run folder, with its best checkpoint
    assert (run_dir / "best" / "trainable.safetensors").is_file() and (run_dir / "run.json").is_file()
    assert len(list((root / "two" / "log" / "LLMGenRec").iterdir())) == 1  # one log file
    assert len(list((root / "two" / "log_tensorboard").iterdir())) == 1
    # Every INFO line once (rank 1 logs errors only): one "test result" line, one per epoch.
    assert two_processes.count("test result") == 1 and two_processes.count("epoch 1 training") == 1
    assert result["checkpoint"] == str(run_dir / "best")

    reference, ranked_one = one_process
    assert result["best_valid_score"] == pytest.approx(reference["best_valid_score"], abs=1e-5)
    ranked_two = torch.load(root / "two" / "ranked.pt")
    assert ranked_two.shape == (8, 10) and (ranked_two >= 1).all()  # 8 test users, 10 ranked items each
    assert torch.equal(ranked_two, ranked_one)  # gathered from both ranks, in the dataloader's order
    assert result["test_result"] == reference["test_result"]
    assert result["test_fingerprint"] == reference["test_fingerprint"]
    # Rank 0 writes the gathered rankings once, the same lists as one process (utils/rankings.py).
    assert sorted(run_dir.glob("*.jsonl")) == [run_dir / "rankings.jsonl"]
    assert result["rankings"] == str(run_dir / "rankings.jsonl")
    one_rows = read_rankings(_run_dirs(workspace, "one")[0] / "rankings.jsonl")
    two_rows = read_rankings(run_dir / "rankings.jsonl")
    assert len(two_rows) == 8
    assert [(r["user"], r["target"], r["items"]) for r in two_rows] == [
        (r["user"], r["target"], r["items"]) for r in one_rows
    ]
    for one, two in zip(one_rows, two_rows, strict=True):
        assert two["scores"] == pytest.approx(one["scores"], abs=1e-4)
    # The IGD §4.2.1 log counts every rank's tokens: the same token counts as one process.
    one_log = (_run_dirs(workspace, "one")[0] / "ig_loss.csv").read_text().splitlines()
    two_log = (run_dir / "ig_loss.csv").read_text().splitlines()
    assert [r.split(",")[:2] + r.split(",")[3:] for r in two_log] == [
        r.split(",")[:2] + r.split(",")[3:] for r in one_log
    ]


def test_baselines_refuse_a_multiprocess_launch_with_the_fix(workspace, monkeypatch):
    from recbole_llm.quick_start import run_recbole_llm

    root = workspace[0]
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = {"data_path": str(root / "data"), "checkpoint_dir": str(root / "sas" / "saved"), "epochs": 1}
    with pytest.raises(RuntimeError, match=r"^SASRec runs in one process only \(2 were launched\): run it "):
        run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config)
    assert not (root / "sas").exists()  # refused before any folder or dataset was made


def test_two_process_run_stopped_mid_epoch_resumes_to_the_same_result(workspace, two_processes):
    root = workspace[0]
    (uninterrupted,) = _results(workspace, "two")
    # SIGTERM to rank 0 alone during step 9 (epoch 1, step 3): both ranks finish the step, save, stop.
    code, out = _launch(workspace, "stopped", 2, env={"STOP_AT": "8"})
    assert code != 0 and "--resume=" in out, out
    (run_dir,) = _run_dirs(workspace, "stopped")
    state = load_training_state(run_dir / "last" / "training_state")
    assert (state["epoch"], state["step"], state["global_step"], state["world_size"]) == (1, 3, 9, 2)
    assert (run_dir / "last" / "rng_state.1").is_file()  # rank 1's own random streams
    assert not _results(workspace, "stopped")
    shutil.copytree(run_dir, root / "stopped-copy" / run_dir.name)

    code, out = _launch(workspace, "stopped", 2, f"--resume={run_dir}")
    assert code == 0, out
    (resumed,) = _results(workspace, "stopped")
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_score"] == uninterrupted["best_valid_score"]
    assert _run_dirs(workspace, "stopped") == [run_dir]  # continued in its own folder, none new

    # The same state resumed by one process: not bit-identical (another summation order), same numbers.
    copy = root / "stopped-copy" / run_dir.name
    results = root / "stopped-copy" / "results"
    code, out = _launch(workspace, "stopped-copy", 1, f"--resume={copy}", f"--results_dir={results}")
    assert code == 0, out
    (single,) = _results(workspace, "stopped-copy")
    assert single["best_valid_score"] == pytest.approx(uninterrupted["best_valid_score"], abs=1e-5)


# ----------------------------------------------------------------------------- fsdp: True (FSDP2, gloo)
@pytest.fixture(scope="module")
def fsdp_two(workspace):
    code, out = _launch(workspace, "fsdp", 2, fsdp=True)
    assert code == 0, out
    return out


def test_fsdp_two_processes_equal_one_process(workspace, one_process, fsdp_two):
    """Sharded weights, gradients and optimizer states (2 ranks): the 1-process validation loss and the very
    same test rankings; one run folder whose best checkpoint holds the whole (unsharded) weights."""
    root = workspace[0]
    assert "fsdp: 3 units sharded over 2 processes" in fsdp_two  # 2 decoder layers + the rest
    (result,) = _results(workspace, "fsdp")
    (run_dir,) = _run_dirs(workspace, "fsdp")
    reference, ranked_one = one_process
    assert result["best_valid_score"] == pytest.approx(reference["best_valid_score"], abs=1e-5)
    assert torch.equal(torch.load(root / "fsdp" / "ranked.pt"), ranked_one)
    assert result["test_result"] == reference["test_result"]
    from safetensors import safe_open

    with safe_open(str(run_dir / "best" / "trainable.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    with safe_open(str(_run_dirs(workspace, "one")[0] / "best" / "trainable.safetensors"), "pt") as f:
        assert shapes == {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def test_fsdp_run_stopped_mid_epoch_resumes_sharded_and_in_one_process(workspace, fsdp_two):
    root = workspace[0]
    (uninterrupted,) = _results(workspace, "fsdp")
    code, out = _launch(workspace, "fsdp-stop", 2, env={"STOP_AT": "8"}, fsdp=True)
    assert code != 0 and "--resume=" in out, out
    (run_dir,) = _run_dirs(workspace, "fsdp-stop")
    state = load_training_state(run_dir / "last" / "training_state")
    assert state["optimizer_format"] == "by_name" and state["world_size"] == 2
    shutil.copytree(run_dir, root / "fsdp-copy" / run_dir.name)
    code, out = _launch(workspace, "fsdp-stop", 2, f"--resume={run_dir}", fsdp=True)
    assert code == 0, out
    (resumed,) = _results(workspace, "fsdp-stop")
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_score"] == pytest.approx(uninterrupted["best_valid_score"], abs=1e-6)
    copy = root / "fsdp-copy" / run_dir.name
    results = root / "fsdp-copy" / "results"
    code, out = _launch(workspace, "fsdp-copy", 1, f"--resume={copy}", f"--results_dir={results}")
    assert code == 0, out  # one process, no sharding: the optimizer state is read by parameter name
    (single,) = _results(workspace, "fsdp-copy")
    assert single["best_valid_score"] == pytest.approx(uninterrupted["best_valid_score"], abs=1e-5)


def test_shipped_accelerate_config_is_a_plain_multi_gpu_launch():
    """properties/accelerate/fsdp.yaml parses as accelerate's config and leaves sharding to ``--fsdp=True``
    (accelerate's own FSDP plugin is refused by the trainer)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "properties" / "accelerate" / "fsdp.yaml"))
    assert config.distributed_type.value == "MULTI_GPU" and not config.fsdp_config
    assert config.mixed_precision == "bf16" and config.num_processes > 1


def test_fsdp_key_is_true_or_false():
    from recbole_llm.config import Config
    from recbole_llm.utils.config_access import check_fsdp

    assert check_fsdp(None) is False and check_fsdp(True) is True
    with pytest.raises(ValueError, match="fsdp='yes' must be True or False"):
        Config(model="LLMGenRec", dataset="tiny", config_dict={"fsdp": "yes", "data_path": "nowhere"})
