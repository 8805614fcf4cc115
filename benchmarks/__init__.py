"""Speed benchmarks of recbole-llm (issue 5), one command: ``python -m benchmarks``.

Everything is measured in one run, on the same inputs, as *ratios* (robust to a shared, busy CPU):

1. ``decoder_speedup``: users/s of our trie-constrained beam search (users batched, prompt KV shared by the
   beams, tensor trie) over the usual Hugging Face path (``model.generate`` one user at a time with
   ``prefix_allowed_tokens_fn``), 10 beams, on ml-100k test prompts with the packaged SmolLM2; the ranked
   titles of both are asserted identical (up to exact score ties);
2. ``step_ratio``: forward + backward time of one training micro-batch for pos / cft / cetrec / igd over sft,
   same micro-batches, same weights;
3. ``padding_share``: padding tokens in the length-grouped training micro-batches of ml-100k;
4. ``trie_build_seconds`` / ``trie_build_peak_mb``: title trie + IG tables of a 41,722-title catalogue;
5. ``full_split_minutes``: the whole ml-100k test split (9,834 users) decoded with every core, projected from
   64 users, next to the decoder as it ran before, ``generate()``, and the compute floor
   (:mod:`benchmarks.full_split`).

See ``benchmarks/README.md`` for the latest table and ``python -m benchmarks --help`` for the options.
"""

from __future__ import annotations

# metric -> (comparison, bound); "min": measured >= bound, "max": measured <= bound, "lt": measured < bound.
TARGETS: dict[str, tuple[str, float]] = {
    "decoder_speedup": ("min", 5.0),
    "step_ratio.pos": ("max", 1.05),
    "step_ratio.cft": ("max", 1.4),
    "step_ratio.cetrec": ("max", 2.1),
    "step_ratio.igd": ("max", 1.05),
    "padding_share": ("lt", 0.10),
    "trie_build_seconds": ("lt", 10.0),
    "trie_build_peak_mb": ("lt", 1024.0),
    "full_split_minutes": ("max", 35.0),
}

OBJECTIVES = ("sft", "pos", "cft", "cetrec", "igd")

__all__ = ["OBJECTIVES", "TARGETS"]
