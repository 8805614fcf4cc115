"""The correctness oracle and speed baseline of the decoder: transformers' own beam search.

``model.generate`` one user at a time with a ``prefix_allowed_tokens_fn`` over a dict of allowed
continuations, as the D3 / IGD / BIGRec reference code decodes; IGD's calibration (IGD §4.3.2 Eq. (9)–(10))
as a logits processor that loops over beams like the IGD reference. Test and benchmark code only:
``recbole_llm.model.decoding.constrained_beam_search`` must rank exactly like it (tests/test_decoding.py)
and is timed against it (:mod:`benchmarks.decoder`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList

from recbole_llm.model.decoding.search import validate_search, weights_device
from recbole_llm.model.trie import TitleTrie

__all__ = ["generate_reference"]


class _IGReferenceProcessor:
    """Reference-style IG calibration: loops over beams, multiplies allowed log-probs by 1 - alpha*IG~."""

    def __init__(self, trie: TitleTrie, prompt_len: int, alpha: float):
        self.trie, self.prompt_len, self.alpha = trie, prompt_len, alpha

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row, seq in enumerate(input_ids.tolist()):
            node = 0
            for tok in seq[self.prompt_len :]:
                node = int(self.trie.advance(torch.tensor([node]), torch.tensor([tok]))[0])
                if node < 0:
                    break
            if node < 0:
                continue
            a, b = int(self.trie.child_ptr[node]), int(self.trie.child_ptr[node + 1])
            toks = self.trie.edge_token[a:b]
            w = 1.0 - self.alpha * self.trie.edge_ig_norm[a:b].to(scores.dtype).to(scores.device)
            scores[row, toks] = scores[row, toks] * w
        return scores


@torch.no_grad()
def generate_reference(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    trie: TitleTrie,
    num_beams: int = 10,
    length_penalty: float = 0.0,
    ig_alpha: float = 0.0,
    max_new_tokens: int | None = None,
    pad_token_id: int | None = None,
    early_stopping: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness oracle and speed baseline: ``model.generate`` beam search one user at a time with a
    ``prefix_allowed_tokens_fn`` over a dict of allowed continuations (as the D3/IGD/BIGRec references).

    Returns ``(leaf_ids, scores)`` like :func:`constrained_beam_search`; HF's filler hypotheses (score
    <= -1e8, used when fewer than ``num_beams`` titles can be finished) are reported as ``-1``.
    """
    validate_search(prompts, trie, num_beams, early_stopping)
    if num_beams < 2:
        raise ValueError(
            "generate_reference needs num_beams >= 2 (transformers runs greedy search for 1 beam)."
        )
    cpu = trie.to("cpu")
    device = weights_device(model)
    eos = trie.eos_token_id
    allowed: dict[tuple[int, ...], list[int]] = {}
    for leaf in range(cpu.num_leaves):
        toks = cpu.leaf_tokens(leaf)
        for j in range(len(toks)):
            nxt = allowed.setdefault(tuple(toks[:j]), [])
            if toks[j] not in nxt:
                nxt.append(toks[j])
    max_new = int(max_new_tokens or trie.max_depth)
    pad = eos if pad_token_id is None else int(pad_token_id)
    out_leaf = torch.full((len(prompts), num_beams), -1, dtype=torch.long)
    out_score = torch.full((len(prompts), num_beams), -math.inf)
    for u, prompt in enumerate(prompts):
        n = len(prompt)

        def prefix_fn(batch_id: int, seq: torch.Tensor, n: int = n) -> list[int]:
            return allowed.get(tuple(seq[n:].tolist()), [eos])

        procs = LogitsProcessorList([_IGReferenceProcessor(cpu, n, ig_alpha)]) if ig_alpha else None
        ids = torch.tensor([list(prompt)], device=device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=num_beams,
            num_return_sequences=num_beams,
            prefix_allowed_tokens_fn=prefix_fn,
            logits_processor=procs,
            length_penalty=length_penalty,
            max_new_tokens=max_new,
            early_stopping=early_stopping,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_scores=True,
        )
        for r, (seq, score) in enumerate(zip(gen.sequences[:, n:].tolist(), gen.sequences_scores.tolist())):
            if score <= -1e8 or eos not in seq:
                continue
            leaf = int(cpu.node_leaf[cpu.walk(seq[: seq.index(eos) + 1])[-1]])
            out_leaf[u, r], out_score[u, r] = leaf, score
    return out_leaf, out_score
