"""Reliability: a training run killed at any point (SIGKILL mid-step, SIGKILL while a checkpoint is being
written, SIGTERM) resumes with one flag to the same weights and metrics as an uninterrupted run, and the
same config + seed gives identical results twice (CPU, tiny random model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recbole_llm.quick_start import load_trained, run_recbole_llm
from recbole_llm.trainer import LLMTrainer, TrainingStopped
from recbole_llm.utils.checkpoint import load_training_state

REPO = Path(__file__).resolve().parent.parent

# 24 training samples in effective batches of 8 (2 micro-batches of 4): 3 optimizer steps per epoch, 2
# epochs, a resumable checkpoint after every step; full fine-tuning with attention dropout 0.05, so an
# unrestored RNG changes the weights.
SETTINGS = {
    "epochs": 2,
    "train_batch_size": 8,
    "micro_batch_size": 4,
    "train_sample_num": 24,
    "eval_sample_num": 4,
    "checkpoint_steps": 1,
    "warmup_steps": 1,
    "learning_rate": 0.01,
    "stopping_step": 5,
    "mixed_precision": "no",
    "show_progress": False,
    "state": "ERROR",
    "log_ig_loss": False,
}


# The child process: the real CLI (run_recbole_llm.py), optionally with a fault injected.
# KILL_MODE=step:  SIGKILL itself in the middle of optimizer step KILL_AT + 1 (after its first micro-batch).
# KILL_MODE=write: SIGKILL itself while writing the KILL_AT-th training state (half a file in last.tmp).
CHILD = r"""
import os, runpy, signal, sys
import torch
from recbole_llm.trainer import llm_trainer, resume

torch.set_num_threads(1)  # as the in-process reference run (tests/conftest.py)

mode, at = os.environ.get("KILL_MODE", ""), int(os.environ.get("KILL_AT", "0"))
if mode == "step":
    original = llm_trainer.LLMTrainer._micro_step
    seen = []

    def micro_step(self, *args, **kwargs):
        if self.global_step == at:
            seen.append(1)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    llm_trainer.LLMTrainer._micro_step = micro_step
elif mode == "write":
    original = resume.save_training_state
    calls = []

    def save_training_state(path, state):
        calls.append(1)
        if len(calls) == at:
            with open(path, "wb") as handle:
                handle.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{half a")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, state)

    resume.save_training_state = save_training_state
sys.argv = ["run_recbole_llm.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["REPO"], "run_recbole_llm.py"), run_name="__main__")
"""


def _config(workspace, name: str, **extra) -> dict:
    root, model_dir = workspace
    return {
        "data_path": str(root / "data"),
        "llm_path": str(model_dir),
        "checkpoint_dir": str(root / name / "saved"),
        "results_dir": str(root / name / "results"),
        **SETTINGS,
        **extra,
    }


def _run_inprocess(workspace, monkeypatch, name: str, **extra) -> dict:
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    return run_recbole_llm(model="LLMGenRec", dataset="tiny", config_dict=_config(workspace, name, **extra))


def _cli(workspace, name: str, *args: str, env: dict | None = None, **extra) -> subprocess.Popen:
    cwd = workspace[0] / name
    cwd.mkdir(exist_ok=True)
    argv = list(args) or [
        "--model=LLMGenRec",
        "--dataset=tiny",
        *(f"--{k}={v}" for k, v in _config(workspace, name, **extra).items()),
    ]
    full_env = {**os.environ, "REPO": str(REPO), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _run_dir(workspace, name: str) -> Path:
    (run,) = (workspace[0] / name / "saved").iterdir()
    return run


def _result(workspace, name: str) -> dict:
    (path,) = (workspace[0] / name / "results" / "tiny").glob("*.json")
    return json.loads(path.read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "trainable.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _state(folder: Path) -> dict:
    return load_training_state(folder / "training_state")


@pytest.fixture(scope="module")
def reference(workspace):
    """The uninterrupted run (in this process)."""
    with pytest.MonkeyPatch.context() as mp:
        result = _run_inprocess(workspace, mp, "reference")
    return result, _run_dir(workspace, "reference")


def test_same_seed_twice_gives_identical_metrics_and_weights(workspace, reference, monkeypatch):
    result, run_dir = reference
    again = _run_inprocess(workspace, monkeypatch, "again")
    assert again["test_result"] == result["test_result"]
    assert again["best_valid_score"] == result["best_valid_score"]
    _assert_same_weights(run_dir / "best", _run_dir(workspace, "again") / "best")
    _assert_same_weights(run_dir / "last", _run_dir(workspace, "again") / "last")
    # Training did change the weights (so equal weights mean something).
    trained = _weights(run_dir / "last")
    initial = load_file(str(next(workspace[1].glob("*.safetensors"))))
    assert not torch.equal(trained["llm.model.embed_tokens.weight"], initial["model.embed_tokens.weight"])


def test_sigkill_mid_epoch_and_mid_write_then_one_flag_resume_equals_uninterrupted(workspace, reference):
    result, ref_dir = reference
    # 1. Killed in the middle of the 5th optimizer step = 2nd step of epoch 1 (3 steps per epoch).
    code, out = _finish(_cli(workspace, "killed", env={"KILL_MODE": "step", "KILL_AT": "4"}))
    assert code == -signal.SIGKILL, out
    run_dir = _run_dir(workspace, "killed")
    state = _state(run_dir / "last")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 4)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["epoch_sums"]["sums"]  # the loss of the epoch's first step, carried over
    assert not list((workspace[0] / "killed" / "results").glob("**/*.json"))

    # 2. Resumed with the one flag, then killed while writing its first checkpoint (after step 5).
    code, out = _finish(
        _cli(workspace, "killed", f"--resume={run_dir}", env={"KILL_MODE": "write", "KILL_AT": "1"})
    )
    assert code == -signal.SIGKILL, out
    assert (run_dir / "last.tmp" / "trainable.safetensors").is_file()  # the half-written checkpoint
    with pytest.raises(ValueError, match="corrupt"):
        load_training_state(run_dir / "last.tmp" / "training_state")
    assert _state(run_dir / "last")["global_step"] == 4  # the previous complete one is untouched
    with pytest.raises(ValueError, match=r"still being written.*pass the run folder"):
        LLMTrainer.resume_folder(run_dir / "last.tmp")
    assert LLMTrainer.resume_folder(run_dir) == run_dir / "last"

    # 3. Resumed again: ends exactly as the uninterrupted run.
    code, out = _finish(_cli(workspace, "killed", f"--resume={run_dir}"))
    assert code == 0, out
    assert not (run_dir / "last.tmp").exists()
    resumed = _result(workspace, "killed")
    assert resumed["model"] == "LLMGenRec" and resumed["config"]["train_sample_num"] == 24
    assert resumed["test_result"] == result["test_result"]
    assert resumed["best_valid_score"] == result["best_valid_score"]
    assert resumed["best_valid_result"] == result["best_valid_result"]
    _assert_same_weights(ref_dir / "best", run_dir / "best")
    _assert_same_weights(ref_dir / "last", run_dir / "last")
    ref_state, end_state = _state(ref_dir / "last"), _state(run_dir / "last")
    assert end_state["train_loss_dict"] == ref_state["train_loss_dict"]
    assert torch.equal(ref_state["rng"]["torch"], end_state["rng"]["torch"])
    # The finished run folder reloads with its run.json, to the same metrics.
    trained = load_trained(run_dir)
    again = LLMTrainer(trained.config, trained.model).evaluate(trained.test_data, load_best_model=False)
    assert dict(again) == dict(result["test_result"])


def test_sigterm_saves_the_current_step_and_resumes_exactly(workspace, reference):
    result, ref_dir = reference
    proc = _cli(workspace, "term")
    saved = workspace[0] / "term" / "saved"
    deadline = time.time() + 240
    while time.time() < deadline and not list(saved.glob("*/last/training_state")):
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # from outside, at an arbitrary point after the first step
    code, out = _finish(proc)
    run_dir = _run_dir(workspace, "term")
    assert code == 143, out
    assert f"--resume={run_dir}" in out
    state = _state(run_dir / "last")
    assert state["global_step"] >= 1

    code, out = _finish(_cli(workspace, "term", f"--resume={run_dir}"))
    assert code == 0, out
    assert _result(workspace, "term")["test_result"] == result["test_result"]
    _assert_same_weights(ref_dir / "best", run_dir / "best")
    _assert_same_weights(ref_dir / "last", run_dir / "last")


def test_stop_signal_in_process_finishes_the_step_then_raises(workspace, reference, monkeypatch):
    """SIGTERM handled in the calling process: the step in progress completes and is saved."""
    _, ref_dir = reference
    original = LLMTrainer._micro_step
    calls = []

    def micro_step(self, *args, **kwargs):
        calls.append(self.global_step)
        if len(calls) == 3:  # first micro-batch of step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LLMTrainer, "_micro_step", micro_step)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="SIGTERM.*--resume=") as stop:
        _run_inprocess(workspace, monkeypatch, "term-inproc")
    assert stop.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    run_dir = _run_dir(workspace, "term-inproc")
    assert _state(run_dir / "last")["global_step"] == 2 and len(calls) == 4
    monkeypatch.setattr(LLMTrainer, "_micro_step", original)
    resumed = _run_inprocess(workspace, monkeypatch, "term-inproc", resume=str(run_dir))
    assert Path(resumed["checkpoint"]) == run_dir / "best"
    _assert_same_weights(ref_dir / "best", run_dir / "best")


def test_ig_loss_log_of_a_run_stopped_mid_epoch_equals_the_uninterrupted_log(workspace, monkeypatch):
    """IGD §4.2.1's per-epoch log survives a stop in the middle of an epoch: same rows, same numbers."""
    reference = _run_inprocess(workspace, monkeypatch, "ig-ref", log_ig_loss=True)
    original = LLMTrainer._micro_step
    calls = []

    def micro_step(self, *args, **kwargs):
        calls.append(self.global_step)
        if len(calls) == 3:  # first micro-batch of step 2 of epoch 0 (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LLMTrainer, "_micro_step", micro_step)
    with pytest.raises(TrainingStopped):
        _run_inprocess(workspace, monkeypatch, "ig-stop", log_ig_loss=True)
    run_dir = _run_dir(workspace, "ig-stop")
    assert _state(run_dir / "last")["ig_loss"]["counts"]["zero"] > 0  # the epoch's first steps, saved
    monkeypatch.setattr(LLMTrainer, "_micro_step", original)
    resumed = _run_inprocess(workspace, monkeypatch, "ig-stop", log_ig_loss=True, resume=str(run_dir))
    assert resumed["test_result"] == reference["test_result"]
    ref_log = (_run_dir(workspace, "ig-ref") / "ig_loss.csv").read_text()
    assert (run_dir / "ig_loss.csv").read_text() == ref_log


def test_resume_errors_name_the_fix(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No resumable state.*run folder.*checkpoint_steps"):
        LLMTrainer.resume_folder(tmp_path)
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "last" / "training_state").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    (run / "last" / "trainable.safetensors").write_bytes(b"not a safetensors file")
    message = r"Cannot resume from .*trainable\.safetensors is corrupt.*train again"
    with pytest.raises(ValueError, match=message), pytest.MonkeyPatch.context() as mp:
        _run_inprocess(workspace, mp, "corrupt", resume=str(run))


def test_deterministic_algorithms_opt_in(workspace, monkeypatch):
    from recbole_llm.config import Config
    from recbole_llm.quick_start import load_run

    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so the teardown removes what is set here
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    config = Config(model="LLMGenRec", dataset="tiny", config_dict=_config(workspace, "det"))
    load_run(config, quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()  # off by default (GPU speed)
    config = Config(
        model="LLMGenRec",
        dataset="tiny",
        config_dict=_config(workspace, "det", deterministic_algorithms=True),
    )
    try:
        load_run(config, quiet=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
