"""Tiny, fully offline tokenizer and causal LMs for tests and benchmarks.

Everything here is built in memory in well under a second and is deterministic, so tests never
touch a model hub and never depend on a cached download.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN]

# A small English corpus covering the prompt templates' wording and typical item titles, so that the
# BPE merges give multi-character tokens for the words the tests use.
_CORPUS = [
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### User Input:\n### Input:\n### Response:\n",
    "Given a list of games the user recently enjoyed, please write a new game that the user may buy",
    "Given ten books that the user watched recently, please recommend a new book that the user likes.",
    "The user has interacted with the following movies before: None",
    '"The Legend of Zelda", "Super Mario Odyssey", "Halo 5: Guardians", "Minecraft"',
    '"The Lord of the Rings", "Harry Potter and the Chamber of Secrets", "The Hobbit"',
    '"Toy Story (1995)", "Star Wars (1977)", "Fargo (1996)", "Pulp Fiction (1994)"',
    "Nintendo Switch PlayStation 4 Xbox One Controller Edition Deluxe Collection",
    "the of and a to in is you that it he was for on are as with his they at be this have from",
    "music album vinyl remastered edition greatest hits live concert soundtrack original",
]


def tiny_tokenizer(extra_texts: Iterable[str] = (), vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory (any text is encodable; ids are deterministic).

    Special tokens: pad ``<|pad|>`` (id 0), eos ``<|endoftext|>`` (id 1), bos ``<|bos|>`` (id 2); pad is
    distinct from eos so tests can tell padding from end-of-title. Like Qwen2, no BOS is added by
    default.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *extra_texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, arch: str = "llama"):
    """Tiny Llama / Qwen2 config: hidden 32, 2 layers, 4 heads, 2 kv heads, intermediate 64."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        from transformers import Qwen2Config

        # Qwen2-0.5B ties the embeddings; keep that so tied-weight code paths are exercised.
        return Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny arch {arch!r}: use 'llama' or 'qwen2'")


def tiny_model(tokenizer: PreTrainedTokenizerFast, arch: str = "llama", seed: int = 0) -> PreTrainedModel:
    """Random-init tiny causal LM in eval mode; the same seed gives the same weights.

    The global torch RNG is left untouched (forked), so building a model inside a test does not
    shift the random stream the test itself relies on.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(tokenizer, arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def tiny_model_dir(tmp_path: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Save a tiny model + tokenizer as a normal HF folder (safetensors) and return its path."""
    out = Path(tmp_path) / f"tiny-{arch}-{seed}"
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, arch=arch, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
