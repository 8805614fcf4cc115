"""Accelerate-based trainer for LLM recommenders, plugged into RecBole's training/evaluation protocol.

Why not RecBole's loop: LLM fine-tuning needs gradient accumulation with a loss normalised over the
whole effective batch, length-grouped micro-batches, mixed precision, DDP through ``accelerate``,
resumable checkpoints of the trainable weights only, and a *generative* evaluation whose ranked lists
are scored by RecBole's own metric classes (``rec.topk``), exactly like SASRec's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, early_stopping, get_local_time, set_color
from tqdm.auto import tqdm

from recbole_llm.trainer.batching import plan_epoch, shard
from recbole_llm.utils.checkpoint import (
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)

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


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is ~2.5x faster than fp32 there (measured: 430 vs 160 tokens/s)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_mixed_precision(value: str | None, use_gpu: bool = True) -> str:
    """``auto`` = bf16 where the hardware runs it fast (bf16 GPUs, AVX512-BF16/AMX CPUs), else fp32."""
    value = (value or "auto").lower()
    if value == "auto":
        if use_gpu and torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if cpu_has_fast_bf16() else "no"
    if value not in {"no", "bf16", "fp16"}:
        raise ValueError(f"mixed_precision must be one of auto, no, bf16, fp16; got {value!r}.")
    return value


def ranked_to_topk(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RecBole's ``rec.topk`` rows from ranked item lists: hit flags per rank, then the number of positives.

    ``ranked`` is ``[B, K]`` item ids, ``-1`` where a list is shorter than K (never a hit), so short
    lists are scored as short lists and no arbitrary ``torch.topk`` tie order enters the metrics.
    """
    hits = (ranked == targets.unsqueeze(1)).int()
    return torch.cat([hits, torch.ones_like(hits[:, :1])], dim=1)


def enable_deterministic_algorithms() -> None:
    """Bit-reproducible GPU runs (``deterministic_algorithms: True``), at some speed cost.

    RecBole's ``reproducibility`` only fixes cuDNN; CUDA matmuls (cuBLAS workspaces) and scatter/index
    backward passes (atomic adds) stay non-deterministic unless PyTorch is told otherwise. The cuBLAS
    setting must precede the first cuBLAS call, hence before the model reaches the GPU. Operations
    without a deterministic kernel only warn (``warn_only``) instead of stopping the run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


class LLMTrainer(Trainer):
    """Fine-tunes an :class:`~recbole_llm.model.LLMGenRec` and evaluates it generatively."""

    def __init__(self, config, model):
        from accelerate import Accelerator

        if config["deterministic_algorithms"]:
            enable_deterministic_algorithms()
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(config["mixed_precision"], bool(config["use_gpu"])),
            cpu=not (torch.cuda.is_available() and config["use_gpu"]),
        )
        super().__init__(config, model)
        self.device = self.accelerator.device
        self.model.to(self.device)
        self.batch_size = int(config["train_batch_size"])
        self.micro_batch_size = int(config["micro_batch_size"] or self.batch_size)
        self.checkpoint_steps = int(config["checkpoint_steps"] or 0)
        # Second-resolution time plus 4 random hex digits (os.urandom: no seeded RNG is consumed), so two runs
        # started in the same second (tuning trials, tests) never share a folder.
        suffix = os.urandom(2).hex()
        self.run_dir = (
            Path(self.checkpoint_dir) / f"{config['model']}-{config['dataset']}-{get_local_time()}-{suffix}"
        )
        self.saved_model_file = str(self.run_dir / "best")
        self.start_step = 0
        self.global_step = 0
        self.scheduler = None
        self._stop_signal: int | None = None  # set by the SIGTERM / SIGINT handler
        self._resume_rng: dict[str, Any] | None = None  # restored right before the first step
        # Running loss sums of the current epoch: saved mid-epoch, so a resumed epoch reports the same loss.
        self._epoch_sums: dict[str, dict[str, float]] = {"sums": {}, "weight_sums": {}}
        # RecBole names the TensorBoard folder after the first log file of the process (logging.basicConfig
        # keeps the first handler: later runs of one process, or pytest's /dev/null handler, would share
        # it); one folder per run, named like the run folder, keeps runs apart.
        self.tensorboard = _own_tensorboard(self.tensorboard, self.run_dir.name)
        self._check_config()

    def _check_config(self) -> None:
        """Settings first read at validation or test time, checked now: no typo may cost a finished training."""
        config = self.config
        valid = str(config["valid_metric"]).lower()
        known = {f"{m.lower()}@{k}" for m in config["metrics"] for k in config["topk"]}
        if valid != "loss" and valid not in known:
            raise ValueError(
                f"valid_metric={config['valid_metric']!r} is neither 'loss' nor one of the evaluated metrics "
                f"({', '.join(sorted(known))}): pick one of them, or add its metric / K to metrics / topk."
            )

    # ----------------------------------------------------------------- optimisation
    def _build_optimizer(self, **kwargs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The model has no trainable parameters: check `tuning` (full or lora).")
        if self.learner.lower() != "adamw":
            self.logger.warning(f"learner={self.learner}: LLM fine-tuning in the papers uses AdamW.")
            return super()._build_optimizer(params=params)
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay or 0.0)

    def _build_scheduler(self, total_steps: int):
        """Linear warm-up for ``warmup_steps`` then linear decay to 0, as the references' HF Trainer."""
        warmup = int(self.config["warmup_steps"] or 0)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if self.config["lr_scheduler"] == "constant":
                return 1.0
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _micro_step(self, samples, denominators: dict[str, torch.Tensor]) -> dict[str, float]:
        """Forward + backward of one micro-batch; the loss is pre-divided by the effective-batch totals."""
        terms = self.model(samples)
        loss = sum(
            self.unwrapped.loss_coefficients[name] * num / denominators[name].clamp_min(1e-12)
            for name, num in terms.items()
        )
        self._check_nan(loss)
        self.accelerator.backward(loss * self.accelerator.num_processes)
        return {name: float(num.detach()) for name, num in terms.items()}

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        dataset = train_data.dataset
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        plan = plan_epoch(
            self._train_lengths,
            self.batch_size,
            self.micro_batch_size,
            seed=int(self.config["seed"]),
            epoch=epoch_idx,
            shuffle=bool(self.config["shuffle"]),
            world_size=world,
        )
        self.model.train()
        if self.start_step == 0:
            self._epoch_sums = {"sums": {}, "weight_sums": {}}
        sums, weight_sums = self._epoch_sums["sums"], self._epoch_sums["weight_sums"]
        bar = tqdm(
            total=len(plan),
            initial=self.start_step,
            desc=set_color(f"Train {epoch_idx:>5}", "pink"),
            disable=not show_progress or not self.accelerator.is_main_process,
            ncols=100,
        )
        for step in range(self.start_step, len(plan)):
            micro_batches = plan[step]
            all_idx = torch.from_numpy(np.concatenate(micro_batches))
            denominators = self.unwrapped.loss_denominators(dataset.inter_feat[all_idx])
            mine = shard(micro_batches, rank, world)
            for i, micro in enumerate(mine):
                samples = dataset.inter_feat[torch.from_numpy(micro)].to(self.device)
                sync = i == len(mine) - 1
                ctx = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
                with ctx, self.accelerator.autocast():
                    numerators = self._micro_step(samples, denominators)
                for name, value in numerators.items():
                    sums[name] = sums.get(name, 0.0) + value
            for name, den in denominators.items():
                weight_sums[name] = weight_sums.get(name, 0.0) + float(den) / world
            if self.clip_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            loss_now = sum(
                self.unwrapped.loss_coefficients[k] * sums[k] / max(weight_sums[k], 1e-12) for k in sums
            )
            bar.set_postfix(loss=f"{loss_now:.4f}")
            bar.update(1)
            if self._should_checkpoint(step + 1, len(plan)) or self._stop_signal is not None:
                self._save_resume_state(epoch_idx, step + 1)  # raises TrainingStopped after a stop signal
        bar.close()
        self.start_step = 0
        return tuple(sums[k] / max(weight_sums[k], 1e-12) for k in sorted(sums)) if sums else 0.0

    def _should_checkpoint(self, step: int, n_steps: int) -> bool:
        return self.checkpoint_steps > 0 and step % self.checkpoint_steps == 0 and step < n_steps

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_loss(self, eval_data, show_progress: bool = False) -> float:
        """Objective loss on the validation samples (early stopping signal of the papers)."""
        dataset = eval_data.dataset
        self.model.eval()
        n = len(dataset)
        lengths = self.unwrapped.sample_lengths(dataset)
        order = np.argsort(-lengths, kind="stable")
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        chunks = np.array_split(order, max(1, math.ceil(n / self.micro_batch_size)))[rank::world]
        sums: dict[str, torch.Tensor] = {}
        dens = self.unwrapped.loss_denominators(dataset.inter_feat)
        for micro in tqdm(chunks, desc="Valid loss", disable=not show_progress, ncols=100):
            with self.accelerator.autocast():
                terms = self.model(dataset.inter_feat[torch.from_numpy(micro)].to(self.device))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
        total = 0.0
        for name, den in dens.items():
            value = self.accelerator.reduce(sums.get(name, torch.zeros((), device=self.device)), "sum")
            total += self.unwrapped.loss_coefficients[name] * float(value) / max(float(den), 1e-12)
        return total

    def _valid_epoch(self, valid_data, show_progress=False):
        if self.valid_metric == "loss":
            loss = self.validation_loss(valid_data, show_progress=show_progress)
            return loss, {"loss": round(loss, 6)}
        self._validating = True
        try:
            return super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self._validating = False

    # ----------------------------------------------------------------- fit
    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None
    ):
        self._train_lengths = self.unwrapped.sample_lengths(train_data.dataset)
        plan_len = len(
            plan_epoch(
                self._train_lengths,
                self.batch_size,
                self.micro_batch_size,
                0,
                0,
                world_size=self.accelerator.num_processes,
            )
        )
        if self.scheduler is None:
            self.scheduler = self._build_scheduler(plan_len * self.epochs)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self._resume_state is not None:
            self._restore_training_state(self._resume_state)
            self._resume_state = None
        self.eval_collector.data_collect(train_data)
        self._write_run_info()
        self._setup_ig_loss_log()
        if self._resume_rng is not None:  # last, so that nothing above shifts the restored streams
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        self._stop_signal = None
        previous = self._install_stop_handlers()
        try:
            return self._fit_epochs(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _install_stop_handlers(self) -> dict[int, Any]:
        """Graceful SIGTERM / SIGINT during ``fit`` (signal handlers can only be set in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        return previous

    def _fit_epochs(self, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        for epoch_idx in range(self.start_epoch, self.epochs):
            t0 = time.time()
            train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, t0, time.time(), train_loss))
            self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
            self._flush_ig_loss(epoch_idx, verbose)
            self._last_epoch = epoch_idx
            if not valid_data or self.eval_step <= 0:
                if saved:
                    self._save_best()
                self._save_resume_state(epoch_idx + 1, 0)
                continue
            t1 = time.time()
            valid_score, valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
            self.best_valid_score, self.cur_step, stop_flag, update_flag = early_stopping(
                valid_score,
                self.best_valid_score,
                self.cur_step,
                max_step=self.stopping_step,
                bigger=self.valid_metric_bigger,
            )
            if verbose:
                self.logger.info(
                    set_color(f"epoch {epoch_idx} evaluating", "green")
                    + f" [time: {time.time() - t1:.2f}s, valid_score: {valid_score:f}]"
                )
                self.logger.info(set_color("valid result", "blue") + f": {valid_result}")
            self.tensorboard.add_scalar("Valid_score", valid_score, epoch_idx)
            for name, value in (valid_result or {}).items():
                self.tensorboard.add_scalar(f"Valid/{name}", value, epoch_idx)
            if update_flag:
                if saved:
                    self._save_best()
                self.best_valid_result = valid_result
            self._save_resume_state(epoch_idx + 1, 0)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)
            if stop_flag:
                if verbose:
                    self.logger.info(
                        f"Finished training, best eval result in epoch {epoch_idx - self.cur_step}"
                    )
                break
        self._add_hparam_to_tensorboard(self.best_valid_score)
        self.tensorboard.flush()
        return self.best_valid_score, self.best_valid_result

    # ----------------------------------------------------------------- logging
    _last_epoch = 0
    _validating = False

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        """RecBole's line, with the loss terms named (``causal``, ``normal``) instead of ``train_loss1/2``."""
        names = sorted(self.unwrapped.objective.term_names)
        if not isinstance(losses, tuple) or len(losses) != len(names):
            return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        coef = self.unwrapped.loss_coefficients
        total = sum(coef[k] * v for k, v in zip(names, losses, strict=True))
        des = self.config["loss_decimal_place"] or 4
        terms = ", ".join(
            f"{set_color(name, 'blue')} (×{coef[name]:g}): {value:.{des}f}"
            for name, value in zip(names, losses, strict=True)
        )
        return (
            f"{set_color(f'epoch {epoch_idx} training', 'green')} [{set_color('time', 'blue')}: "
            f"{e_time - s_time:.2f}s, {set_color('train loss', 'blue')}: {total:.{des}f} = {terms}]"
        )

    def _add_train_loss_to_tensorboard(self, epoch_idx, losses, tag="Loss/Train"):
        """``Loss/Train`` = the objective's loss (Σ coefficient · term); ``Loss/Train/<term>`` with two terms.

        ``_train_epoch`` returns one mean per loss term, in sorted term-name order.
        """
        names = sorted(self.unwrapped.objective.term_names)
        if not isinstance(losses, tuple) or len(losses) != len(names):
            return super()._add_train_loss_to_tensorboard(epoch_idx, losses, tag)
        coef = self.unwrapped.loss_coefficients
        total = sum(coef[k] * v for k, v in zip(names, losses, strict=True))
        self.tensorboard.add_scalar(tag, total, epoch_idx)
        if len(names) > 1:
            for name, value in zip(names, losses, strict=True):
                self.tensorboard.add_scalar(f"{tag}/{name}", value, epoch_idx)

    def _write_run_info(self) -> None:
        """``<run_dir>/run.json``: what ``load_trained`` and the analyses need to reload this run folder."""
        if not self.accelerator.is_main_process:
            return
        from recbole_llm.utils.results import config_snapshot, jsonable, run_name

        config = self.config
        info = {
            "run": run_name(config),
            "model": config["model"],
            "dataset": config["dataset"],
            "objective": config["objective"],
            "decoder": config["decoder"],
            "checkpoint": str(self.run_dir / "best"),
            "tensorboard_dir": os.path.abspath(self.tensorboard.log_dir),
            "config": config_snapshot(config),
            "overrides": {k: jsonable(v) for k, v in config.external_config_dict.items() if k != "resume"},
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "run.json", info)

    def _setup_ig_loss_log(self) -> None:
        """IGD §4.2.1: token loss by IG group per epoch to ``<run_dir>/ig_loss.csv`` and TensorBoard.

        On unless ``log_ig_loss: False``; it costs one detached cross-entropy of the factual logits per
        micro-batch. Under DDP only the main process logs (its shard of the tokens).
        """
        model = self.unwrapped
        model.ig_loss_tracker = None
        if self.config["log_ig_loss"] is False or not hasattr(model, "item_token_ig"):
            return
        if not self.accelerator.is_main_process:
            return
        from recbole_llm.analysis.ig_stats import IGLossTracker

        model.ig_loss_tracker = IGLossTracker.for_token_table(
            self.run_dir / "ig_loss.csv",
            model.item_token_ig,
            model.item_lengths,
            model.popularity,
            tensorboard=self.tensorboard,
        )

    def _flush_ig_loss(self, epoch_idx: int, verbose: bool) -> None:
        tracker = getattr(self.unwrapped, "ig_loss_tracker", None)
        if tracker is None:
            return
        means = tracker.flush(epoch_idx)
        if verbose:
            text = ", ".join(f"{g}: {v:.4f}" for g, v in means.items())
            self.logger.info(set_color("token loss by IG group", "blue") + f": {text}")

    # ----------------------------------------------------------------- checkpoints
    def _save_best(self) -> None:
        if self.accelerator.is_main_process:
            self.unwrapped.save_checkpoint(self.run_dir / "best")
        self.accelerator.wait_for_everyone()

    def _save_resume_state(self, epoch: int, step: int) -> None:
        """Everything needed to continue exactly here: weights, optimizer, scheduler, RNG, early stopping.

        Written to ``last.tmp`` and swapped in only when complete, so a kill at any moment leaves either
        the previous or the new ``last`` (never a half-written one) for :meth:`resume_checkpoint`.
        ``epoch``/``step`` say where to continue: step ``step`` of epoch ``epoch`` (step 0 = its start).
        A pending stop signal ends training right after the state is saved (:class:`TrainingStopped`).
        """
        acc = self.accelerator
        tmp = self.run_dir / "last.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.unwrapped.save_checkpoint(tmp)
            mid_epoch = step > 0
            save_training_state(
                tmp / "training_state",
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": capture_rng_state(),
                    "epoch": epoch,
                    "step": step,
                    "global_step": self.global_step,
                    "cur_step": self.cur_step,
                    "best_valid_score": float(self.best_valid_score),
                    "best_valid_result": self.best_valid_result,
                    "train_loss_dict": {str(k): v for k, v in self.train_loss_dict.items()},
                    "epoch_sums": self._epoch_sums if mid_epoch else {"sums": {}, "weight_sums": {}},
                    "world_size": acc.num_processes,
                },
            )
        if acc.num_processes > 1:  # every process's own RNG (dropout masks differ per process)
            acc.wait_for_everyone()
            if not acc.is_main_process:
                save_training_state(tmp / f"rng_state.{acc.process_index}", {"rng": capture_rng_state()})
            acc.wait_for_everyone()
        if acc.is_main_process:
            _replace_dir(tmp, self.run_dir / "last")
        acc.wait_for_everyone()
        if self._stop_signal is not None:
            stop = TrainingStopped(self.run_dir, self._stop_signal)
            self.logger.warning(str(stop))
            raise stop

    _resume_state: dict[str, Any] | None = None

    @staticmethod
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

    def resume_checkpoint(self, resume_file):
        """Resume from a run folder (or its ``last`` sub-folder) written by this trainer."""
        path = self.resume_folder(resume_file)
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"])
        self.start_step = int(state["step"])
        self.global_step = int(state["global_step"])
        self.cur_step = int(state["cur_step"])
        self.best_valid_score = float(state["best_valid_score"])
        self.best_valid_result = state.get("best_valid_result")
        self.train_loss_dict = {int(k): v for k, v in (state.get("train_loss_dict") or {}).items()}
        sums = state.get("epoch_sums") or {}
        self._epoch_sums = {
            "sums": dict(sums.get("sums") or {}),
            "weight_sums": dict(sums.get("weight_sums") or {}),
        }

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

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """Generate ranked item lists and score them with RecBole's metric classes (HR@K, NDCG@K, ...)."""
        if not eval_data:
            return None
        if self.eval_type != EvaluatorType.RANKING:
            raise ValueError("LLMGenRec is evaluated by ranking metrics (Hit, NDCG, ...), not value metrics.")
        model = self.unwrapped
        if load_best_model:
            checkpoint = Path(model_file or self.saved_model_file)
            model.load_checkpoint(checkpoint)
            self.logger.info(f"Loading model parameters from {checkpoint}")
        model.eval()
        k = max(self.config["topk"])
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        done: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (batch index, topk rows, ranked items)
        iid = self.config["ITEM_ID_FIELD"]
        batches = tqdm(
            eval_data,
            total=len(eval_data),
            desc=set_color("Evaluate   ", "pink"),
            disable=not show_progress or not self.accelerator.is_main_process,
            ncols=100,
        )
        for batch_idx, batched_data in enumerate(batches):
            if batch_idx % world != rank:
                continue
            interaction = batched_data[0].to(self.device)
            with self.accelerator.autocast():
                ranked = model.recommend(interaction, k)
            done.append((batch_idx, ranked_to_topk(ranked, interaction[iid]).cpu(), ranked.cpu()))
        if world > 1:
            # Each process scored every world-th batch: collect the CPU tensors (pickled objects, not
            # padded device tensors, so uneven shares are fine) and restore the dataloader's order.
            from accelerate.utils import gather_object

            done = sorted(gather_object(done), key=lambda entry: entry[0])
        topk = torch.cat([t for _, t, _ in done]) if done else torch.zeros((0, k + 1), dtype=torch.int)
        ranked_items = torch.cat([r for _, _, r in done]) if done else torch.zeros((0, k), dtype=torch.long)
        struct = self.eval_collector.get_data_struct()
        struct.set("rec.topk", topk)
        struct.set("rec.items", ranked_items.clamp_min(0))
        result = self.evaluator.evaluate(struct)
        self.last_ranked_items = ranked_items
        if not self._validating and self.accelerator.is_main_process:
            for name, value in result.items():
                self.tensorboard.add_scalar(f"Test/{name}", value, self._last_epoch)
            self.tensorboard.flush()
        return result


def _own_tensorboard(writer, name: str):
    """Replace RecBole's writer by one writing to ``log_tensorboard/<name>``; drop its empty events file."""
    from torch.utils.tensorboard import SummaryWriter

    event_writer = getattr(writer._get_file_writer(), "event_writer", None)
    empty = Path(getattr(event_writer, "_file_name", "") or "")
    writer.close()
    if empty.name.startswith("events.out.tfevents."):
        try:
            empty.unlink()
            empty.parent.rmdir()  # only if nothing else (another run) writes there
        except OSError:
            pass
    return SummaryWriter(os.path.join("log_tensorboard", name))


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap a fully written folder into place so a crash never leaves a half-written checkpoint in use."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
