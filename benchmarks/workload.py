"""The inputs every benchmark shares: config, the prepared dataset, one backbone, one LLMGenRec per objective.

All objectives are built on the *same* backbone object (same weights, same memory), so their step times
differ only by what the objective adds.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch

BACKBONES = ("smollm2", "tiny", "qwen2-0.5b-random")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Workload:
    config: Any
    train: Any  # RecBole dataset of the training samples
    test: Any  # RecBole dataset of the test samples
    llm: torch.nn.Module
    tokenizer: Any
    backbone: str
    models: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0

    def model(self, objective: str):
        """The LLMGenRec of ``objective`` on the shared backbone (built on first use)."""
        if objective not in self.models:
            from recbole_llm.model import llm_gen_rec

            cfg = copy.copy(self.config)
            cfg.final_config_dict = dict(self.config.final_config_dict)
            cfg["objective"] = objective
            with mock.patch.object(llm_gen_rec, "load_backbone", lambda _cfg: (self.llm, self.tokenizer)):
                self.models[objective] = llm_gen_rec.LLMGenRec(cfg, self.train)
        return self.models[objective]


def set_threads(threads: int) -> int:
    """Intra-op threads for this process. On a CPU shared with other jobs one thread per process avoids
    OpenMP barrier stalls (measured here under load: a 10-row matmul ran at 0.8 GFLOP/s on 2 threads,
    29 GFLOP/s on 1)."""
    threads = int(threads) if threads else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def quiet():
    """Silence RecBole / transformers INFO logging and warnings while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_workload(
    backbone: str = "smollm2",
    dataset: str = "ml-100k",
    data_path: str = "dataset/",
    eval_samples: int = 16,
    device: str = "cpu",
    dtype: str = "fp32",
    seed: int = 2020,
) -> Workload:
    """Prepared ``dataset`` (all training samples, a seeded sample of ``eval_samples`` test samples) and the
    backbone (``smollm2``: the packaged SmolLM2-135M-Instruct; ``tiny``: a random 2-layer Llama for smoke
    runs; ``qwen2-0.5b-random``: Qwen2-0.5B's shape, random weights, SmolLM2's tokenizer)."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is unknown: choose one of {', '.join(BACKBONES)}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown: choose one of {', '.join(DTYPES)}.")
    t0 = time.perf_counter()
    with quiet():
        from recbole.data import data_preparation
        from recbole.utils import init_seed

        from recbole_llm.config import Config, command_line_ignored
        from recbole_llm.model.backbone import load_backbone
        from recbole_llm.quick_start import create_dataset

        with command_line_ignored():  # the benchmark's own options (--only full_split) are no run keys
            config = Config(
                model="LLMGenRec",
                dataset=dataset,
                config_dict={
                    "data_path": data_path,
                    "state": "ERROR",
                    "show_progress": False,
                    "train_sample_num": None,
                    "eval_sample_num": eval_samples,
                    "use_gpu": device != "cpu",
                    "seed": seed,
                    "llm_dtype": "float32",
                },
            )
        init_seed(seed, True)
        train, _, test = data_preparation(config, create_dataset(config))
        if backbone == "smollm2":
            llm, tokenizer = load_backbone(config)
        else:
            llm, tokenizer = _random_backbone(backbone, seed)
    llm = llm.to(device=device, dtype=DTYPES[dtype])
    return Workload(
        config=config,
        train=train.dataset,
        test=test.dataset,
        llm=llm,
        tokenizer=tokenizer,
        backbone=backbone,
        load_seconds=time.perf_counter() - t0,
    )


def _random_backbone(backbone: str, seed: int):
    if backbone == "tiny":
        from recbole_llm.utils.testing import tiny_model, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        return tiny_model(tokenizer, seed=seed), tokenizer
    # Qwen2-0.5B's shape (speed does not depend on the weights) with SmolLM2's tokenizer, whose ids all fit
    # in Qwen2's larger vocabulary.
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from recbole_llm.model.backbone import materialize_smollm2

    tokenizer = AutoTokenizer.from_pretrained(str(materialize_smollm2()), local_files_only=True)
    cfg = Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32_768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model, tokenizer


def machine_info(threads: int, device: str) -> dict[str, Any]:
    """CPU model, cores, flags that matter for speed, library versions, date, load average."""
    import transformers

    cpu, family, model_no, flags = platform.processor() or "unknown CPU", "", "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    cpu = value
                elif key == "cpu family":
                    family = value
                elif key == "model":
                    model_no = value
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_family_model": f"{family}/{model_no}" if family else "",
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "threads": threads,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device != "cpu" and torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


def machine_text(info: dict[str, Any]) -> str:
    cpu = info["cpu"] + (
        f" (family/model {info['cpu_family_model']})" if info.get("cpu_family_model") else ""
    )
    text = (
        f"{cpu}, {info['cores']} cores ({info['threads']} intra-op thread(s) used), "
        f"torch {info['torch']}, transformers {info['transformers']}, {info['date']}"
    )
    if info.get("gpu_name"):
        text += f", GPU {info['gpu_name']}"
    return text


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Timer:
    """Wall-clock and process CPU time of a block. On a CPU shared with other jobs the *CPU time* of a
    single-threaded process is the robust measure of its work (waiting for a core does not count), so the
    ratios use it on CPU; on CUDA they use wall-clock time after a synchronize."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        self._sync()
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0

    @property
    def seconds(self) -> float:
        """The measure the ratios use: CPU time on CPU, wall-clock time on a GPU."""
        return self.cpu if self.device == "cpu" else self.wall

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
