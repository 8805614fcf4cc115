"""Accelerate-based trainer for LLM recommenders, plugged into RecBole's training/evaluation protocol.

Why not RecBole's loop: LLM fine-tuning needs gradient accumulation with a loss normalised over the
whole effective batch, length-grouped micro-batches, mixed precision, DDP through ``accelerate``,
resumable checkpoints of the trainable weights only, and a *generative* evaluation whose ranked lists
are scored by RecBole's own metric classes (``rec.topk``), exactly like SASRec's.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, early_stopping, get_local_time, set_color
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from recbole_llm.model.objectives import weighted_total
from recbole_llm.trainer.batching import plan_epoch, shard
from recbole_llm.trainer.evaluation import Rankings, ranked_to_topk, score_ranked
from recbole_llm.trainer.ig_loss import IGLossTracker
from recbole_llm.trainer.precision import enable_deterministic_algorithms, resolve_mixed_precision
from recbole_llm.trainer.resume import ResumableTraining, empty_epoch_sums
from recbole_llm.trainer.sharding import full_weights, shard_model
from recbole_llm.utils.checkpoint import restore_rng_state
from recbole_llm.utils.distributed import broadcast_from_main, reduce_sum
from recbole_llm.utils.errors import UserError
from recbole_llm.utils.io import write_json_atomic
from recbole_llm.utils.results import config_snapshot, jsonable, run_name
from recbole_llm.utils.runs import record_path


class LLMTrainer(ResumableTraining, Trainer):
    """Fine-tunes an :class:`~recbole_llm.model.LLMGenRec` and evaluates it generatively."""

    def __init__(self, config, model):
        if config["deterministic_algorithms"]:
            enable_deterministic_algorithms()
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(config["mixed_precision"], bool(config["use_gpu"])),
            cpu=not (torch.cuda.is_available() and config["use_gpu"]),
        )
        # Every rank would create checkpoint_dir at once (RecBole's ensure_dir races: FileExistsError).
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        if self.accelerator.is_main_process:
            super().__init__(config, model)
        else:  # only rank 0 writes TensorBoard curves: no writer, no log_tensorboard/ folder, elsewhere
            with mock.patch("recbole.trainer.trainer.get_tensorboard", lambda logger: NoTensorBoard()):
                super().__init__(config, model)
        self.device = self.accelerator.device
        self.model.to(self.device)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise UserError(
                "accelerate's FSDP plugin (distributed_type: FSDP) is not used by recbole-llm: launch with a "
                "plain multi-process config (properties/accelerate/fsdp.yaml) and pass --fsdp=True."
            )
        # fsdp: the trainer shards the LLM itself (see trainer/sharding.py); with one process it changes nothing.
        self.fsdp = bool(config["fsdp"]) and self.accelerator.num_processes > 1  # validated by Config
        if self.fsdp:
            units = shard_model(self.model, self.device)
            self.optimizer = self._build_optimizer()  # over the sharded parameters
            self.logger.info(f"fsdp: {units} units sharded over {self.accelerator.num_processes} processes")
        self.batch_size = int(config["train_batch_size"])
        self.micro_batch_size = int(config["micro_batch_size"] or self.batch_size)
        self.checkpoint_steps = int(config["checkpoint_steps"] or 0)
        # Second-resolution time plus 4 random hex digits (os.urandom: no seeded RNG is consumed), so two runs
        # started in the same second (tuning trials, tests) never share a folder. Rank 0 names it, for all ranks.
        name = f"{config['model']}-{config['dataset']}-{get_local_time()}-{os.urandom(2).hex()}"
        self.run_dir = Path(self.checkpoint_dir) / broadcast_from_main(name)
        self.saved_model_file = str(self.run_dir / "best")
        self.start_step = 0
        self.global_step = 0
        self.scheduler = None
        self._stop_signal: int | None = None  # set by the SIGTERM / SIGINT handler
        self._resume_rng: dict[str, Any] | None = None  # restored right before the first step
        # Running loss sums of the current epoch: saved mid-epoch, so a resumed epoch reports the same loss.
        self._epoch_sums: dict[str, dict[str, float]] = empty_epoch_sums()
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
        # As floats, the totals stay CPU scalars: a CUDA numerator is divided as before (num · (1/den)).
        totals = {name: float(den) for name, den in denominators.items()}
        loss = weighted_total(terms, totals, self.unwrapped.loss_coefficients)
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
            self._epoch_sums = empty_epoch_sums()
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
            for name, den in denominators.items():  # each rank 1/world of the total: summed at the end
                weight_sums[name] = weight_sums.get(name, 0.0) + float(den) / world
            if self.clip_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            loss_now = weighted_total(sums, weight_sums, self.unwrapped.loss_coefficients)
            bar.set_postfix(loss=f"{loss_now:.4f}")
            bar.update(1)
            if self._should_checkpoint(step + 1, len(plan)) or self._stop_agreed():
                self._save_resume_state(epoch_idx, step + 1)  # raises TrainingStopped after a stop signal
        bar.close()
        self.start_step = 0
        sums, weight_sums = reduce_sum(sums), reduce_sum(weight_sums)  # every rank's shard of the epoch
        return tuple(sums[k] / max(weight_sums[k], 1e-12) for k in sorted(sums)) if sums else 0.0

    def _should_checkpoint(self, step: int, n_steps: int) -> bool:
        return self.checkpoint_steps > 0 and step % self.checkpoint_steps == 0 and step < n_steps

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_loss(self, eval_data: Any, show_progress: bool = False) -> float:
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
        with full_weights(self.model):  # ranks may run one chunk more than others
            for micro in tqdm(chunks, desc="Valid loss", disable=not show_progress, ncols=100):
                with self.accelerator.autocast():
                    terms = self.model(dataset.inter_feat[torch.from_numpy(micro)].to(self.device))
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
        zero = torch.zeros((), device=self.device)
        totals = {name: float(self.accelerator.reduce(sums.get(name, zero), "sum")) for name in dens}
        return float(weighted_total(totals, dens, self.unwrapped.loss_coefficients))

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
        self,
        train_data: Any,
        valid_data: Any = None,
        verbose: bool = True,
        saved: bool = True,
        show_progress: bool = False,
        callback_fn: Any = None,
    ) -> tuple[float, dict[str, Any] | None]:
        """RecBole's ``fit``: train (or continue a resumed run) with early stopping; returns the best validation
        score and result. Before the first step: the epoch plan (for the scheduler's length), accelerate's
        wrapping, the restored state of a resumed run, ``run.json`` and the IG-loss log; the random streams
        are restored last, so that nothing here shifts them."""
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
        if self.fsdp:  # already sharded: accelerate would wrap it in DDP
            self.optimizer = self.accelerator.prepare(self.optimizer)
        else:
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
        if self.config["zero_shot"]:
            return self._zero_shot(valid_data, verbose, saved, show_progress)
        with self._stop_signals_handled():
            return self._fit_epochs(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _zero_shot(self, valid_data, verbose, saved, show_progress):
        """``zero_shot``: the LLM as loaded, no optimizer step. It is validated and saved as a trained run's
        best model is, so the test, ``--evaluate``, ``recommend`` and ``compare`` treat it like any run."""
        self._last_epoch = 0
        score, result = (
            self._valid_epoch(valid_data, show_progress=show_progress) if valid_data else (0.0, None)
        )
        if verbose:
            self.logger.info(set_color("zero-shot (no training)", "green") + f": valid_score {score:f}")
        self.best_valid_score, self.best_valid_result = score, result
        if saved:
            self._save_best()
        return self.best_valid_score, self.best_valid_result

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
        means = _term_means(self.unwrapped, losses)
        if means is None:
            return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        coef = self.unwrapped.loss_coefficients
        total = _objective_loss(self.unwrapped, means)
        des = self.config["loss_decimal_place"] or 4
        terms = ", ".join(
            f"{set_color(name, 'blue')} (×{coef[name]:g}): {value:.{des}f}" for name, value in means.items()
        )
        return (
            f"{set_color(f'epoch {epoch_idx} training', 'green')} [{set_color('time', 'blue')}: "
            f"{e_time - s_time:.2f}s, {set_color('train loss', 'blue')}: {total:.{des}f} = {terms}]"
        )

    def _add_train_loss_to_tensorboard(self, epoch_idx, losses, tag="Loss/Train"):
        """``Loss/Train`` = the objective's loss (Σ coefficient · term); ``Loss/Train/<term>`` with two terms.

        ``_train_epoch`` returns one mean per loss term, in sorted term-name order.
        """
        means = _term_means(self.unwrapped, losses)
        if means is None:
            return super()._add_train_loss_to_tensorboard(epoch_idx, losses, tag)
        self.tensorboard.add_scalar(tag, _objective_loss(self.unwrapped, means), epoch_idx)
        if len(means) > 1:
            for name, value in means.items():
                self.tensorboard.add_scalar(f"{tag}/{name}", value, epoch_idx)

    def _write_run_info(self) -> None:
        """``<run_dir>/run.json``: what ``load_trained`` and the analyses need to reload this run folder."""
        if not self.accelerator.is_main_process:
            return
        config = self.config
        info = {
            "run": run_name(config),
            "model": config["model"],
            "dataset": config["dataset"],
            "objective": config["objective"],
            "decoder": config["decoder"],
            "checkpoint": str(self.run_dir / "best"),
            # Relative to the run folder and absolute (utils/runs.py): resumable and reloadable when moved.
            "paths": {
                "checkpoint": record_path(self.run_dir / "best", self.run_dir),
                "data": record_path(config["data_path"], self.run_dir),
                "results": record_path(
                    Path(config["results_dir"] or "results") / config["dataset"], self.run_dir
                ),
            },
            "tensorboard_dir": os.path.abspath(self.tensorboard.log_dir),
            "config": config_snapshot(config),
            "overrides": {k: jsonable(v) for k, v in config.external_config_dict.items() if k != "resume"},
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "run.json", info, ensure_ascii=True)

    def _setup_ig_loss_log(self) -> None:
        """IGD §4.2.1: token loss by IG group per epoch to ``<run_dir>/ig_loss.csv`` and TensorBoard.

        On unless ``log_ig_loss: False``; it costs one detached cross-entropy of the factual logits per
        micro-batch. With several processes every rank tracks its shard of the tokens, the epoch's sums are
        added up over the ranks at the flush and rank 0 writes them: the same log as one process.
        """
        model = self.unwrapped
        model.ig_loss_tracker = None
        if self.config["log_ig_loss"] is False or not hasattr(model, "item_token_ig"):
            return
        model.ig_loss_tracker = IGLossTracker.for_token_table(
            self.run_dir / "ig_loss.csv",
            model.item_token_ig,
            model.item_lengths,
            model.popularity,
            tensorboard=self.tensorboard,
            write=self.accelerator.is_main_process,
        )
        resumed = getattr(self, "_resume_ig_loss", None)
        if (
            resumed and self.accelerator.is_main_process
        ):  # rank 0's saved sums hold every rank's share  # a run resumed mid-epoch: the epoch's tokens before the checkpoint count too
            model.ig_loss_tracker.load_state(resumed)
            self._resume_ig_loss = None

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
        with full_weights(self.model):  # fsdp: rank 0 writes the whole weights, as without it
            if self.accelerator.is_main_process:
                self.unwrapped.save_checkpoint(self.run_dir / "best")
            self.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self,
        eval_data: Any,
        load_best_model: bool = True,
        model_file: str | os.PathLike | None = None,
        show_progress: bool = False,
    ) -> dict[str, float] | None:
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
        done: list[tuple[int, torch.Tensor, torch.Tensor, Rankings]] = []  # (batch, topk rows, ranked, all)
        iid, uid = self.config["ITEM_ID_FIELD"], self.config["USER_ID_FIELD"]
        batches = tqdm(
            eval_data,
            total=len(eval_data),
            desc=set_color("Evaluate   ", "pink"),
            disable=not show_progress or not self.accelerator.is_main_process,
            ncols=100,
        )
        with full_weights(self.model):  # ranks decode different users for different numbers of steps
            for batch_idx, batched_data in enumerate(batches):
                if batch_idx % world != rank:
                    continue
                interaction = batched_data[0].to(self.device)
                with self.accelerator.autocast():
                    ranked, scores = model.recommend_scored(interaction, k)
                users, targets = interaction[uid].cpu(), interaction[iid].cpu()
                row = Rankings(users, targets, ranked.cpu(), scores.cpu().float())
                done.append((batch_idx, ranked_to_topk(ranked, interaction[iid]).cpu(), ranked.cpu(), row))
        if world > 1:
            # Each process scored every world-th batch: collect the CPU tensors (pickled objects, not
            # padded device tensors, so uneven shares are fine) and restore the dataloader's order.
            done = sorted(gather_object(done), key=lambda entry: entry[0])
        topk = torch.cat([t for _, t, _, _ in done]) if done else torch.zeros((0, k + 1), dtype=torch.int)
        ranked_items = (
            torch.cat([r for _, _, r, _ in done]) if done else torch.zeros((0, k), dtype=torch.long)
        )
        result = score_ranked(self.evaluator, self.eval_collector.get_data_struct(), topk, ranked_items)
        self.last_ranked_items = ranked_items
        self.last_rankings = _cat_rankings([entry[3] for entry in done], k)
        if not self._validating and self.accelerator.is_main_process:
            for name, value in result.items():
                self.tensorboard.add_scalar(f"Test/{name}", value, self._last_epoch)
            self.tensorboard.flush()
        return result


def _cat_rankings(parts: list[Rankings], k: int) -> Rankings:
    """One :class:`Rankings` of the batches, in order (empty tensors when nothing was evaluated)."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return Rankings(empty, empty, torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k)))
    return Rankings(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _term_means(model, losses) -> dict[str, float] | None:
    """The epoch's mean of each loss term by name (``_train_epoch`` returns them in sorted name order)."""
    names = sorted(model.objective.term_names)
    if not isinstance(losses, tuple) or len(losses) != len(names):
        return None
    return dict(zip(names, losses, strict=True))


def _objective_loss(model, means: dict[str, float]) -> float:
    """Σ coefficient · term mean: the means are already normalised (denominator 1)."""
    return weighted_total(means, dict.fromkeys(means, 1.0), model.loss_coefficients)


class NoTensorBoard:
    """A ``SummaryWriter`` that writes nothing (and creates no folder): re-decoding a finished run logs no curves."""

    log_dir = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _own_tensorboard(writer, name: str):
    """Replace RecBole's writer by one writing to ``log_tensorboard/<name>``; drop its empty events file."""
    if isinstance(writer, NoTensorBoard):
        return writer
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
