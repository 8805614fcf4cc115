"""Checkpoints: trainable-weight round trips (full / LoRA / tied / extra modules), clear errors for
missing, corrupt and mismatched files, atomic writes, and a bit-exact optimizer + RNG resume."""

import json
import math
import random

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from recbole_llm.utils import checkpoint as ckpt
from recbole_llm.utils.checkpoint import (
    capture_rng_state,
    load_trainable,
    load_training_state,
    restore_rng_state,
    save_trainable,
    save_training_state,
)
from recbole_llm.utils.testing import tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def perturb(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def lora(model, r: int = 8):
    config = LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, config)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_full_round_trip(tok, tmp_path, arch):
    model = tiny_model(tok, arch, seed=0)
    perturb(model)
    path = save_trainable(model, tmp_path / "best", config={"llm_path": "tiny", "tuning": "full"})
    assert path == tmp_path / "best" / "trainable.safetensors"
    fresh = tiny_model(tok, arch, seed=1)
    assert not torch.equal(logits(fresh), logits(model))
    result = load_trainable(fresh, tmp_path / "best")
    assert torch.equal(logits(fresh), logits(model))
    sidecar = json.loads((tmp_path / "best" / "trainable.safetensors.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once here too
    assert sidecar["n_parameters"] == n_params and len(result.loaded) == len(sidecar["tensors"])
    assert sidecar["identity"]["tuning"] == '"full"'
    # Qwen2 ties lm_head to the embeddings: stored once, still tied after loading.
    if arch == "qwen2":
        assert "lm_head.weight" not in sidecar["tensors"]
        assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_lora_round_trip_saves_only_adapters(tok, tmp_path):
    model = lora(tiny_model(tok, "llama", seed=0))
    perturb(model)  # LoRA B starts at zero: make the adapters matter
    save_trainable(model, tmp_path / "lora.safetensors")
    names = json.loads((tmp_path / "lora.safetensors.json").read_text())["tensors"]
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B); A is [r, 32], B is [out, r] (v_proj out = 2 kv heads x 8).
    assert len(names) == 8 and all(".lora_" in n for n in names)
    assert names["base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight"]["shape"] == [16, 8]
    fresh = lora(tiny_model(tok, "llama", seed=0))
    assert not torch.equal(logits(fresh), logits(model))
    load_trainable(fresh, tmp_path / "lora.safetensors")
    assert torch.equal(logits(fresh), logits(model))


def test_extra_modules_round_trip(tok, tmp_path):
    model = tiny_model(tok, "llama")
    extra = torch.nn.Embedding(4, 3)
    save_trainable(model, tmp_path / "c.safetensors", extra_modules={"temporal": extra})
    other = torch.nn.Embedding(4, 3)
    load_trainable(tiny_model(tok, "llama"), tmp_path / "c.safetensors", extra_modules={"temporal": other})
    assert torch.equal(other.weight, extra.weight)


def test_missing_and_corrupt_files(tok, tmp_path):
    model = tiny_model(tok, "llama")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trainable(model, tmp_path / "nope.safetensors")
    path = save_trainable(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated mid-tensor
    with pytest.raises(
        ValueError, match=r"is corrupt .*delete it and rerun, or resume from the previous checkpoint"
    ):
        load_trainable(model, path)
    path.write_bytes(b"\x07" + data[1:64])  # truncated header
    with pytest.raises(ValueError, match="is corrupt"):
        load_trainable(model, path)
    save_training_state(tmp_path / "state", {"epoch": 1})
    with pytest.raises(ValueError, match="not a recbole_llm trainable-weights checkpoint"):
        load_trainable(model, tmp_path / "state")


def test_mismatch_names_the_tensor_and_the_config_key(tok, tmp_path):
    base = tiny_model(tok, "llama")
    save_trainable(lora(base, r=8), tmp_path / "r8.safetensors", config={"tuning": "lora", "lora_r": 8})
    with pytest.raises(
        ValueError, match=r"shape mismatch.*lora_A.*\(8, 32\) vs model \(4, 32\).*lora_r"
    ) as err:
        load_trainable(lora(tiny_model(tok, "llama"), r=4), tmp_path / "r8.safetensors")
    assert "lora_r=8" in str(err.value)  # what the checkpoint was written with
    with pytest.raises(ValueError, match=r"lora_r: checkpoint 8 vs now 4"):
        load_trainable(
            lora(tiny_model(tok, "llama"), r=4),
            tmp_path / "r8.safetensors",
            config={"tuning": "lora", "lora_r": 4},
        )
    # A full fine-tuning checkpoint into a LoRA model: names differ -> tuning.
    save_trainable(tiny_model(tok, "llama"), tmp_path / "full.safetensors")
    with pytest.raises(ValueError, match=r"missing from the checkpoint.*tuning \(full vs lora\)"):
        load_trainable(lora(tiny_model(tok, "llama")), tmp_path / "full.safetensors")
    # A different backbone (vocab / hidden size): llm_path.
    small = tiny_model(tiny_tokenizer(vocab_size=300), "llama")
    with pytest.raises(ValueError, match=r"embed_tokens.*llm_path"):
        load_trainable(small, tmp_path / "full.safetensors")
    # strict=False tolerates missing/unexpected names but never a shape mismatch.
    result = load_trainable(lora(tiny_model(tok, "llama")), tmp_path / "r8.safetensors", strict=False)
    assert result.missing == [] and len(result.loaded) == 8


def test_atomic_write_keeps_previous_file(tok, tmp_path, monkeypatch):
    model = tiny_model(tok, "llama")
    path = save_trainable(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_save)
    perturb(model)
    with pytest.raises(OSError, match="disk full"):
        save_trainable(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.json"]


def _step(model, optimizer, scheduler):
    x = torch.randint(0, 300, (2, 6))  # data drawn from the global RNG: tests the RNG restore too
    loss = model(x, labels=x).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return opt, sched


def test_resume_gives_bit_identical_adamw_step(tok, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(tok, "qwen2").train()
    opt, sched = _optimizer(model)
    for _ in range(2):
        _step(model, opt, sched)
    save_trainable(model, tmp_path / "last")
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": capture_rng_state(),
        "epoch": 1,
        "step": 2,
        "cur_step": 0,
        "best_valid_score": -math.inf,
    }
    save_training_state(tmp_path / "last" / "training_state", state)
    _step(model, opt, sched)  # the uninterrupted run
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    torch.manual_seed(123)  # a different process state
    resumed = tiny_model(tok, "qwen2", seed=7).train()
    load_trainable(resumed, tmp_path / "last")
    opt2, sched2 = _optimizer(resumed)
    loaded = load_training_state(tmp_path / "last" / "training_state")
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    restore_rng_state(loaded["rng"])
    assert loaded["epoch"] == 1 and loaded["best_valid_score"] == -math.inf
    _step(resumed, opt2, sched2)
    for name, p in resumed.named_parameters():
        assert torch.equal(p, expected[name]), name
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rng_states_restored(tmp_path):
    state = capture_rng_state()
    save_training_state(tmp_path / "rng.safetensors", {"rng": state})
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    restore_rng_state(load_training_state(tmp_path / "rng.safetensors")["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == draws  # noqa: NPY002


def test_training_state_types_round_trip(tmp_path):
    state = {
        "ints": {0: {"step": torch.tensor(3.0)}, 7: None},
        "tuple": (0.9, 0.999),
        "floats": [0.1, 1 / 3, math.inf, 1e-300],
        "arr": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "__tensor__": "a key that looks like a marker",
        "empty": {},
        "np_scalar": np.float32(0.5),
        "shared": [torch.arange(4.0), torch.arange(4.0)[1:3]],  # views share memory: copied on save
    }
    out = load_training_state(save_training_state(tmp_path / "s", state))
    assert list(out["ints"]) == [0, 7] and torch.equal(out["ints"][0]["step"], torch.tensor(3.0))
    assert out["tuple"] == (0.9, 0.999) and out["floats"] == [0.1, 1 / 3, math.inf, 1e-300]
    assert out["arr"].dtype == np.uint32 and out["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["bf16"].dtype == torch.bfloat16 and out["bf16"].tolist() == [1.5, -2.25]
    assert (
        out["__tensor__"] == "a key that looks like a marker"
        and out["empty"] == {}
        and out["np_scalar"] == 0.5
    )
    assert [t.tolist() for t in out["shared"]] == [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0]]
    with pytest.raises(TypeError, match=r"state\['bad'\]\[1\] has type function"):
        save_training_state(tmp_path / "x", {"bad": [1, lambda: 0]})
    with pytest.raises(ValueError, match="not a recbole_llm training-state file"):
        load_training_state(save_trainable(tiny_model(tiny_tokenizer()), tmp_path / "w.safetensors"))
