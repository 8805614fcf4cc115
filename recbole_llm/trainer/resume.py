"""Resumable training: a run killed at any moment continues from ``<run_dir>/last`` with one flag.

``last`` holds everything needed to continue exactly where the run stopped: the trainable weights, the
optimizer, scheduler and RNG states, the early-stopping counters and the current epoch's loss sums. It
is written to ``last.tmp`` and swapped in only when complete (:func:`~recbole_llm.utils.io.replace_dir`).
SIGTERM / SIGINT finish the current optimizer step, save ``last``, then stop (:class:`TrainingStopped`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from recbole_llm.trainer.sharding import full_weights, load_optimizer_state, optimizer_state
from recbole_llm.utils.checkpoint import (
    capture_rng_state,
    load_training_state,
    save_training_state,
)
from recbole_llm.utils.distributed import reduce_sum
from recbole_llm.utils.errors import UserError
from recbole_llm.utils.io import replace_dir

# Signals that stop training gracefully: finish the optimizer step, save a resumable state, exit.
STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130}  # exit codes 128 + signal number


class TrainingStopped(KeyboardInterrupt):
    """Training was stopped by SIGTERM / SIGINT after a resumable state was saved in ``run_dir/last``.

    A ``KeyboardInterrupt`` so that a broad ``except Exception`` never swallows the stop.
    """

    def __init__(self, run_dir: Path, signum: int):
        self.run_dir = Path(run_dir)
        self.signum = int(signum)
        self.exit_code = STOP_SIGNALS.get(signum, 1)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(
            f"Training stopped by {name}; its state is saved in {self.run_dir / 'last'}. "
            f"Continue it with: python run_recbole_llm.py --resume={self.run_dir}"
        )


def resume_folder(resume_file: str | os.PathLike) -> Path:
    """The ``last`` checkpoint folder of a run folder (or that folder itself); never a ``*.tmp`` one.

    A ``last.tmp`` may be half written (the run was killed while saving) and is never loaded; a
    ``last.old`` exists without ``last`` only if the run was killed between the two renames of the
    swap, and is then the newest complete state.
    """
    path = Path(resume_file)
    if path.name.endswith(".tmp"):
        raise ValueError(
            f"{path} is a checkpoint that was still being written (it may be incomplete) and is never "
            f"loaded: pass the run folder {path.parent} instead."
        )
    for candidate in (path / "last", path / "last.old"):
        if (candidate / "training_state").is_file():
            return candidate
    if (path / "training_state").is_file():
        return path
    raise FileNotFoundError(
        f"No resumable state in {resume_file}: pass the run folder printed by the interrupted run "
        "(saved/LLMGenRec-<dataset>-<time>), which holds a `last/` checkpoint. A run killed before "
        "its first checkpoint has none: start it again (lower checkpoint_steps to save more often)."
    )


def empty_epoch_sums() -> dict[str, dict[str, float]]:
    """Running loss sums of an epoch that has not started (numerators and weight totals per term)."""
    return {"sums": {}, "weight_sums": {}}


def _bare(optimizer):
    """The torch optimizer inside accelerate's wrapper (torch's state-dict helpers check its type)."""
    return getattr(optimizer, "optimizer", optimizer)


class ResumableTraining:
    """The trainer's resumable state: saved after steps and epochs, restored by ``--resume``, stop signals.

    Mixed into :class:`~recbole_llm.trainer.llm_trainer.LLMTrainer`, whose attributes it reads
    (``accelerator``, ``run_dir``, ``optimizer``, ``scheduler``, early-stopping counters, ...).
    """

    _resume_state: dict[str, Any] | None = None
    resume_folder = staticmethod(resume_folder)

    def _save_resume_state(self, epoch: int, step: int) -> None:
        """Everything needed to continue exactly here: weights, optimizer, scheduler, RNG, early stopping.

        Written to ``last.tmp`` and swapped in only when complete, so a kill at any moment leaves either
        the previous or the new ``last`` (never a half-written one) for :meth:`resume_checkpoint`.
        ``epoch``/``step`` say where to continue: step ``step`` of epoch ``epoch`` (step 0 = its start).
        A pending stop signal ends training right after the state is saved (:class:`TrainingStopped`).
        """
        acc = self.accelerator
        tmp = self.run_dir / "last.tmp"
        mid_epoch = step > 0
        # Collective sums (every rank calls them): rank 0 saves every rank's share of the epoch so far.
        epoch_sums = {key: reduce_sum(part) for key, part in self._epoch_sums.items()} if mid_epoch else None
        ig_loss = self._ig_loss_state() if mid_epoch else None
        fsdp = getattr(self, "fsdp", False)
        # fsdp: every rank gathers its shards of the optimizer state (by parameter name, any world size)
        optimizer = optimizer_state(self.model, _bare(self.optimizer)) if fsdp else None
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        with full_weights(self.model):
            if acc.is_main_process:
                self.unwrapped.save_checkpoint(tmp)
        if acc.is_main_process:
            save_training_state(
                tmp / "training_state",
                {
                    "optimizer": self.optimizer.state_dict() if optimizer is None else optimizer,
                    "optimizer_format": "by_index" if optimizer is None else "by_name",
                    "scheduler": self.scheduler.state_dict(),
                    "rng": capture_rng_state(),
                    "epoch": epoch,
                    "step": step,
                    "global_step": self.global_step,
                    "cur_step": self.cur_step,
                    "best_valid_score": float(self.best_valid_score),
                    "best_valid_result": self.best_valid_result,
                    "train_loss_dict": {str(k): v for k, v in self.train_loss_dict.items()},
                    "epoch_sums": epoch_sums or empty_epoch_sums(),
                    "ig_loss": ig_loss,
                    "world_size": acc.num_processes,
                },
            )
        if acc.num_processes > 1:  # every process's own RNG (dropout masks differ per process)
            acc.wait_for_everyone()
            if not acc.is_main_process:
                save_training_state(tmp / f"rng_state.{acc.process_index}", {"rng": capture_rng_state()})
            acc.wait_for_everyone()
        if acc.is_main_process:
            replace_dir(tmp, self.run_dir / "last")
        acc.wait_for_everyone()
        if self._stop_agreed():
            stop = TrainingStopped(self.run_dir, self._stop_signal)
            self.logger.warning(str(stop))
            raise stop

    def resume_checkpoint(self, resume_file):
        """Resume from a run folder (or its ``last`` sub-folder) written by this trainer."""
        path = resume_folder(resume_file)
        self.run_dir = path.parent
        self.saved_model_file = str(self.run_dir / "best")
        try:
            self.unwrapped.load_checkpoint(path)
            self._resume_state = load_training_state(path / "training_state")
        except ValueError as err:
            raise ValueError(
                f"Cannot resume from {path}: {err}. A damaged `last` usually means the disk filled up or the "
                f"folder was copied partially; the run cannot continue from it, so train again (a new run)."
            ) from err
        rng_file = path / f"rng_state.{self.accelerator.process_index}"
        if self.accelerator.process_index == 0:
            self._resume_rng = self._resume_state.get("rng")
        elif rng_file.is_file():
            self._resume_rng = load_training_state(rng_file)["rng"]
        saved_world = int(self._resume_state.get("world_size", 1))
        if saved_world != self.accelerator.num_processes:
            self.logger.warning(
                f"{path} was written by {saved_world} process(es), resuming with "
                f"{self.accelerator.num_processes}: training continues, but not bit-identically."
            )
        self.logger.info(
            f"Resuming from {path}: epoch {self._resume_state['epoch']}, step {self._resume_state['step']}"
        )

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        if state.get("optimizer_format") == "by_name":  # written with fsdp: loads sharded or not
            load_optimizer_state(self.model, _bare(self.optimizer), state["optimizer"])
        elif getattr(self, "fsdp", False):
            raise UserError(
                "This run was trained without fsdp: resume it with --fsdp=False (any number of processes)."
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"])
        self.start_step = int(state["step"])
        self.global_step = int(state["global_step"])
        self.cur_step = int(state["cur_step"])
        self.best_valid_score = float(state["best_valid_score"])
        self.best_valid_result = state.get("best_valid_result")
        self.train_loss_dict = {int(k): v for k, v in (state.get("train_loss_dict") or {}).items()}
        self._resume_ig_loss = state.get("ig_loss")  # applied when fit() sets up the IG-loss log
        # Rank 0's saved sums are every rank's share: the other ranks continue the epoch from zero.
        sums = (state.get("epoch_sums") or {}) if self.accelerator.is_main_process else {}
        self._epoch_sums = {
            "sums": dict(sums.get("sums") or {}),
            "weight_sums": dict(sums.get("weight_sums") or {}),
        }

    def _stop_agreed(self) -> bool:
        """Whether any process got a stop signal; every process calls it after the same optimizer step.

        A launcher's SIGTERM reaches the processes at slightly different moments: each stopping on its own
        signal would leave one saving (a barrier) while another waits in the next step's all-reduce.
        """
        if self.accelerator.num_processes == 1:
            return self._stop_signal is not None
        flag = torch.tensor([self._stop_signal or 0], device=self.accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag) and self._stop_signal is None:
            self._stop_signal = int(flag)
        return bool(int(flag))

    def _ig_loss_state(self) -> dict[str, Any] | None:
        tracker = getattr(self.unwrapped, "ig_loss_tracker", None)
        return None if tracker is None else tracker.state()

    @contextlib.contextmanager
    def _stop_signals_handled(self) -> Iterator[None]:
        """Graceful SIGTERM / SIGINT during ``fit``, the previous handlers back afterwards.

        Signal handlers can only be set in the main thread; elsewhere nothing changes.
        """
        self._stop_signal = None
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_stop_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop_signal(self, signum, frame):  # noqa: ARG002 - signal handler signature
        """Finish the current optimizer step, save a resumable state, then stop (no work lost).

        A second signal of the same kind stops at once (the default handler is back in place).
        """
        self._stop_signal = signum
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        # os.write, not logging: a handler may interrupt the main thread in the middle of a log write.
        os.write(
            2,
            f"\n{signal.Signals(signum).name} received: finishing the current step, then saving to "
            f"{self.run_dir / 'last'} (send it again to stop at once, losing the current step)\n".encode(),
        )


__all__ = ["STOP_SIGNALS", "ResumableTraining", "TrainingStopped", "resume_folder"]
