"""The one prompt builder: item titles → token ids, identical in training, the trie and IG.

Every prompt is a concatenation of cached, pre-tokenised pieces (docs/design.md §2)::

    [BOS?] prefix | item piece (oldest kept) | item piece | ... | response header | target piece

* ``prefix``          = preamble + instruction + input header (category words filled in).
* item piece          = ``history_lead + item_format(title)`` for the first kept item and
                        ``item_separator + item_format(title)`` for the others, so the separator and
                        its space sit *before* a title (``, "Halo"``), which is how byte-level BPE
                        tokenises running text (`` "`` is one token) — a trailing-space piece would
                        leave a lone space token instead.
* ``response header`` ends where the generated text starts. For the quoted templates (d3, cft) it
  ends with the *opening* quote, so the target piece is ``Title"\\n`` + EOS: every token the model is
  trained on, the trie contains and IG is computed on carries title information, and the decoder is
  never asked to produce a constant first token.
* target piece        = ``target_format(title)`` tokenised on its own + ``[eos_token_id]``.
  :meth:`PromptBuilder.target_tokens` / :meth:`all_target_sequences` return these very lists, so
  training labels, the decoding trie and IG use the same ids by construction.

Pieces are tokenised separately (``add_special_tokens=False``, ``split_special_tokens=True`` so a
title that contains e.g. ``<|im_end|>`` is text, never a special token). The ids therefore may differ
from tokenising the whole prompt string at piece boundaries, which is harmless: consistency, not
byte-identity with a one-shot tokenisation, is what matters. BOS: added once at the very start only
if the tokenizer adds one by default (Llama-2 style); Qwen2, SmolLM2 and the tiny test tokenizer add
none. Padding is right-padding with ``pad_token_id``; labels, masks and target positions are built
from lengths, so ``pad == eos`` is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from recbole_llm.model.prompt_templates import Category, PromptTemplate
from recbole_llm.utils.config_access import config_get

IGNORE_INDEX = -100
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
COUNTERFACTUAL_MODES = ("placeholder", "drop")
# Which tokens of a history item's piece get its temporal index (CETRec §4.2.1: "every token that
# constitutes the item", its example counts the title's tokens only): "title" (default) or "piece"
# (also the separator and quotes, the behaviour before issue 12; kept to reproduce older runs).
TEMPORAL_SCOPES = ("title", "piece")


# --------------------------------------------------------------------------------------- batch
@dataclass
class PromptBatch:
    """Right-padded prompts ``[B, L]`` plus where the target tokens are.

    ``labels`` is ``-100`` except at target tokens. ``item_index`` is, for every title token of a history
    item (``temporal_scope: piece``: every token of its piece), the item's distance from the most recent
    item (0 = most recent), else ``-1``.
    The ``T`` target tokens, in (sample, position) order: ``target_rows``/``target_cols`` are their
    positions, ``target_labels`` their ids, ``target_t`` their 1-based index within the title piece
    and ``target_size`` that piece's length ``|y|`` (EOS included). The hidden state at
    ``predict_positions`` (column − 1) predicts each of them. Inference batches (no targets) have
    ``T = 0`` and all-``-100`` labels.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    item_index: torch.Tensor
    lengths: torch.Tensor
    history_len: torch.Tensor
    target_len: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_labels: torch.Tensor
    target_t: torch.Tensor
    target_size: torch.Tensor

    @property
    def predict_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.target_rows, self.target_cols - 1

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


# --------------------------------------------------------------------------------------- builder
class PromptBuilder:
    """Build training / inference prompts from cached token pieces (see module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        titles: Sequence[str],
        template: PromptTemplate | str = "d3",
        category: Any = None,
        max_length: int = 512,
        max_history: int = 10,
        counterfactual: str = "placeholder",
        placeholder: str = "None",
        temporal_scope: str = "title",
    ) -> None:
        self.template = PromptTemplate.builtin(template) if isinstance(template, str) else template
        self.category = Category.from_any(category)
        self.max_length = int(max_length)
        self.max_history = int(max_history)
        if self.max_history < 1:
            raise ValueError(f"max_history={max_history} must be >= 1 (MAX_ITEM_LIST_LENGTH)")
        if counterfactual not in COUNTERFACTUAL_MODES:
            raise ValueError(f"cft_counterfactual={counterfactual!r} is unknown: use 'placeholder' or 'drop'")
        self.counterfactual_mode = counterfactual
        if temporal_scope not in TEMPORAL_SCOPES:
            raise ValueError(f"temporal_scope={temporal_scope!r} is unknown: use 'title' or 'piece'")
        self.temporal_scope = temporal_scope
        self.placeholder = str(placeholder)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: every target title must end with EOS")
        self.tokenizer = tokenizer
        self.eos_token_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(self.eos_token_id if pad is None else pad)
        self.n_items = len(titles)
        if self.n_items < 2:
            raise ValueError("titles must hold the padding entry (index 0) and at least one item")
        for i, title in enumerate(titles[1:], start=1):
            if not isinstance(title, str):
                raise TypeError(f"title of item {i} is {title!r}; every item needs a string title")
        self._tokenize_pieces(titles)

    @classmethod
    def from_config(
        cls, config: Any, tokenizer: Any, titles: Sequence[str], category: Any = None
    ) -> PromptBuilder:
        """Keys: prompt_template (+ prompt_* overrides), category, max_length, MAX_ITEM_LIST_LENGTH,
        cft_counterfactual, cft_placeholder, temporal_scope.

        ``max_length`` is capped at the model's context (``tokenizer.model_max_length``, which
        :func:`~recbole_llm.model.backbone.load_backbone` sets to ``max_position_embeddings``): longer
        prompts lose their oldest history items, never the target.
        """
        max_length = int(config_get(config, "max_length", 512))
        context = getattr(tokenizer, "model_max_length", None)
        if isinstance(context, int) and 0 < context < max_length:
            logging.getLogger(__name__).warning(
                "max_length=%d exceeds the model's context of %d tokens: using %d (the oldest history "
                "items of long prompts are dropped)",
                max_length,
                context,
                context,
            )
            max_length = context
        builder = cls(
            tokenizer,
            titles,
            PromptTemplate.from_config(config),
            category if category is not None else config_get(config, "category"),
            max_length=max_length,
            max_history=int(config_get(config, "MAX_ITEM_LIST_LENGTH", 10)),
            counterfactual=str(config_get(config, "cft_counterfactual", "placeholder")),
            placeholder=str(config_get(config, "cft_placeholder", "None")),
            temporal_scope=str(config_get(config, "temporal_scope", "title")),
        )
        builder.check_max_length()
        return builder

    # ----------------------------------------------------------------- pre-tokenisation
    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Batched tokenisation without special tokens; special-token strings stay plain text."""
        if not texts:
            return []
        if self._fast_ok:
            backend = self.tokenizer.backend_tokenizer
            previous = backend.encode_special_tokens
            backend.encode_special_tokens = True
            try:
                return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
            finally:
                backend.encode_special_tokens = previous
        out = self.tokenizer(
            texts, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False
        )["input_ids"]
        return [list(ids) for ids in out]

    def _check_fast_path(self, probes: list[str]) -> None:
        """Use the Rust backend directly (3x faster on 40k titles) only if it agrees with the HF call."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._fast_ok = False
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return
        reference = self._encode(probes)
        self._fast_ok = True
        try:
            self._fast_ok = self._encode(probes) == reference
        except Exception:  # any backend quirk means: use the regular call
            self._fast_ok = False

    def _title_masks(
        self, texts: list[str], ids: list[list[int]], start: Sequence[int], size: Sequence[int]
    ) -> list[list[bool]]:
        """Per piece, which of its tokens overlap the title's characters ``[start, start + size)``.

        Character offsets come from the same tokenisation as the pieces (checked id for id); a token that
        straddles the boundary (e.g. a quote merged with the title's first letters) counts as title.
        """
        if self._fast_ok:
            backend = self.tokenizer.backend_tokenizer
            previous = backend.encode_special_tokens
            backend.encode_special_tokens = True
            try:
                encs = backend.encode_batch(texts, add_special_tokens=False)
            finally:
                backend.encode_special_tokens = previous
            pairs = [(e.ids, e.offsets) for e in encs]
        else:
            try:
                out = self.tokenizer(
                    texts, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
                )
            except NotImplementedError as err:
                raise ValueError(
                    "temporal_scope: title needs a fast tokenizer (character offsets); use temporal_scope: piece"
                ) from err
            pairs = list(zip(out["input_ids"], out["offset_mapping"]))
        masks = []
        for (got, offsets), want, a, n in zip(pairs, ids, start, size):
            if list(got) != want:
                raise ValueError(
                    "the tokenizer's offsets pass disagrees with its ids; use temporal_scope: piece"
                )
            masks.append([s < a + n and e > a and e > s for s, e in offsets])
        return masks

    def _fill(self, text: str) -> str:
        words = {
            "singular": self.category.singular,
            "plural": self.category.plural,
            "verb": self.category.verb,
            "max_history": self.max_history,
            "max_history_words": _NUMBER_WORDS[self.max_history]
            if self.max_history <= 20
            else self.max_history,
        }
        try:
            return text.format_map(words)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt string {text!r} has an unknown or malformed field ({err}); allowed fields: "
                f"{', '.join('{' + k + '}' for k in words)} (double literal braces: '{{{{')"
            ) from err

    def _leading_specials(self) -> list[int]:
        """Tokens the tokenizer puts in front of text by default (BOS for Llama-2-style tokenizers)."""
        plain = self._encode(["a"])[0]
        full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    def _tokenize_pieces(self, titles: Sequence[str]) -> None:
        t = self.template
        self._fast_ok = False
        lead = self._leading_specials()
        instruction = self._fill(t.instruction)
        fixed_texts = [
            self._fill(t.preamble) + instruction + self._fill(t.input_header),
            self._fill(t.preamble_no_input) + instruction,
            self._fill(t.history_lead) + self.placeholder,
            self._fill(t.response_header),
        ]
        probes = [*fixed_texts, *(t.target_format.replace("{title}", x) for x in titles[1:17])]
        self._check_fast_path([*probes, "<|im_end|> <|endoftext|> </s> <s> plain"])
        fixed = self._encode(fixed_texts)
        self.bos_ids = lead
        self.prefix_ids = lead + fixed[0]
        self.prefix_no_input_ids = lead + fixed[1]
        self.placeholder_ids = fixed[2]
        self.response_ids = fixed[3]

        items = list(titles[1:])
        lead_text, sep = self._fill(t.history_lead), self._fill(t.item_separator)
        shown = [t.item_format.replace("{title}", title) for title in items]
        first = self._encode([lead_text + s for s in shown])
        rest = self._encode([sep + s for s in shown])
        target = self._encode([t.target_format.replace("{title}", title) for title in items])
        if self.temporal_scope == "title":
            at = t.item_format.index("{title}")
            sizes = [len(title) for title in items]
            first_mask = self._title_masks(
                [lead_text + s for s in shown], first, [len(lead_text) + at] * len(items), sizes
            )
            rest_mask = self._title_masks([sep + s for s in shown], rest, [len(sep) + at] * len(items), sizes)
        else:
            first_mask = [[True] * len(x) for x in first]
            rest_mask = [[True] * len(x) for x in rest]
        self._first_mask = [[], *first_mask]
        self._rest_mask = [[], *rest_mask]
        eos = self.eos_token_id
        for i, ids in enumerate(target, start=1):
            if eos in ids:
                raise ValueError(
                    f"the title of item {i} ({titles[i]!r}) tokenises to a sequence containing EOS"
                )
            ids.append(eos)
        # Index 0 is the padding item: empty pieces, rejected by _check_items.
        self._first = [[], *first]
        self._rest = [[], *rest]
        self._target = [[], *target]
        self._first_len = [len(x) for x in self._first]
        self._rest_len = [len(x) for x in self._rest]
        self.max_target_length = max(len(x) for x in self._target)

    def check_max_length(self) -> None:
        """Raise now if no prompt at all fits in ``max_length`` (else the first batch would say so)."""
        shortest = self._fixed_len() + min(self._first_len[1:]) + min(len(x) for x in self._target[1:])
        if shortest > self.max_length:
            raise ValueError(
                f"max_length={self.max_length} is too small: the fixed prompt alone takes {self._fixed_len()} "
                f"tokens and the shortest prompt with one history item and a target {shortest}; raise "
                f"max_length (>= {shortest + 2 * self.max_target_length} leaves room for a few history items)"
            )

    # ----------------------------------------------------------------- public look-ups
    def target_tokens(self, item: int) -> list[int]:
        """Token ids of the item's target piece, EOS included (the trie's / the labels' sequence)."""
        self._check_items([item])
        return list(self._target[item])

    def all_target_sequences(self) -> list[list[int]]:
        """Target pieces indexed by item id; entry 0 (padding) is ``[]`` and must be skipped."""
        return [list(x) for x in self._target]

    def _check_items(self, items: Sequence[int]) -> None:
        for item in items:
            if not 0 < item < self.n_items:
                if item == 0:
                    raise ValueError(
                        "item id 0 is RecBole's padding item and has no title: pass histories without "
                        "padding (cut each at its item_length)"
                    )
                raise ValueError(f"item id {item} is out of range: titles cover ids 1..{self.n_items - 1}")

    # ----------------------------------------------------------------- per-sample assembly
    def _resolve_cf(self, counterfactual: Any) -> str | None:
        if counterfactual in (None, False):
            return None
        if counterfactual in (True, "drop_history"):
            return self.counterfactual_mode
        if counterfactual in COUNTERFACTUAL_MODES:
            return counterfactual
        raise ValueError(
            f"counterfactual={counterfactual!r} is unknown: use None, 'drop_history' (the configured "
            f"cft_counterfactual), 'placeholder' or 'drop'"
        )

    def _kept(self, history: Sequence[int], budget: int, target: int | None) -> list[int]:
        """Most recent items whose pieces fit in ``budget`` tokens (oldest dropped first)."""
        hist = list(history)[-self.max_history :]
        if not hist:
            raise ValueError(
                "empty history: every sample needs at least one history item (prepare the data with "
                "min_history >= 1); only counterfactual prompts have no history"
            )
        self._check_items(hist)
        used, start = 0, None
        for j in range(len(hist) - 1, -1, -1):
            if used + self._first_len[hist[j]] > budget:
                break
            start = j
            used += self._rest_len[hist[j]]
        if start is None:
            what = (
                f"target item {target} ({len(self._target[target])} tokens)"
                if target
                else "the longest title"
            )
            raise ValueError(
                f"max_length={self.max_length} is too small: the fixed prompt ({self._fixed_len()} tokens), "
                f"the most recent history item {hist[-1]} ({self._first_len[hist[-1]]} tokens) and {what} "
                f"do not fit; raise max_length"
            )
        return hist[start:]

    def _fixed_len(self) -> int:
        return len(self.prefix_ids) + len(self.response_ids)

    def _budget(self, target: int | None) -> int:
        reserve = len(self._target[target]) if target is not None else self.max_target_length
        return self.max_length - self._fixed_len() - reserve

    def _assemble(
        self, history: Sequence[int], target: int | None, cf: str | None
    ) -> tuple[list[int], list[int], int]:
        """(prompt ids without target, item_index of those ids, number of history items kept)."""
        if cf is not None:
            prefix = (
                self.prefix_ids + self.placeholder_ids if cf == "placeholder" else self.prefix_no_input_ids
            )
            ids = prefix + self.response_ids
            reserve = len(self._target[target]) if target is not None else self.max_target_length
            if len(ids) + reserve > self.max_length:
                raise ValueError(
                    f"max_length={self.max_length} is too small for the counterfactual prompt "
                    f"({len(ids)} tokens) plus {reserve} target tokens; raise max_length"
                )
            return ids, [-1] * len(ids), 0
        kept = self._kept(history, self._budget(target), target)
        n = len(kept)
        ids = list(self.prefix_ids)
        index = [-1] * len(ids)
        ids += self._first[kept[0]]
        index += [n - 1 if m else -1 for m in self._first_mask[kept[0]]]
        for j in range(1, n):
            ids += self._rest[kept[j]]
            index += [n - 1 - j if m else -1 for m in self._rest_mask[kept[j]]]
        ids += self.response_ids
        index += [-1] * len(self.response_ids)
        return ids, index, n

    # ----------------------------------------------------------------- public builders
    def prompt_ids(self, history: Sequence[int], counterfactual: Any = None) -> list[int]:
        """Inference prompt up to and including the response header (room is left for any title)."""
        return self._assemble(history, None, self._resolve_cf(counterfactual))[0]

    def prompt_ids_batch(
        self, histories: Sequence[Sequence[int]], counterfactual: Any = None
    ) -> list[list[int]]:
        cf = self._resolve_cf(counterfactual)
        return [self._assemble(h, None, cf)[0] for h in histories]

    def prompt_item_index(self, history: Sequence[int], counterfactual: Any = None) -> list[int]:
        """``item_index`` aligned with :meth:`prompt_ids` (for temporal embeddings at inference)."""
        return self._assemble(history, None, self._resolve_cf(counterfactual))[1]

    def lengths(self, histories: Sequence[Sequence[int]], targets: Sequence[int] | None = None) -> np.ndarray:
        """Token length of each training prompt (prompt + target), for length-grouped batching."""
        out = np.empty(len(histories), dtype=np.int64)
        for b, history in enumerate(histories):
            target = None if targets is None else int(targets[b])
            if target is not None:
                self._check_items([target])
            ids, _, _ = self._assemble(history, target, None)
            out[b] = len(ids) + (len(self._target[target]) if target is not None else 0)
        return out

    def kept_counts(self, histories: Sequence[Sequence[int]], targets: Sequence[int]) -> list[int]:
        """Number of history items each training prompt keeps (``PromptBatch.history_len``, no tokens built)."""
        return [len(self._kept(h, self._budget(int(t)), int(t))) for h, t in zip(histories, targets)]

    def build(
        self,
        histories: Sequence[Sequence[int]],
        targets: Sequence[int] | None = None,
        counterfactual: Any = None,
    ) -> PromptBatch:
        """Right-padded batch; with ``targets`` the target pieces are appended and labelled.

        ``counterfactual``: None (factual), ``"drop_history"`` or True (the configured
        ``cft_counterfactual``), or explicitly ``"placeholder"`` / ``"drop"``. Its target tokens are
        identical to the factual ones.
        """
        cf = self._resolve_cf(counterfactual)
        bsz = len(histories)
        if targets is not None:
            if len(targets) != bsz:
                raise ValueError(f"{len(targets)} targets for {bsz} histories")
            targets = [int(x) for x in targets]
            self._check_items(targets)
        flat_ids: list[int] = []
        flat_index: list[int] = []
        lengths, hist_len, tlen = [], [], []
        for b in range(bsz):
            target = None if targets is None else targets[b]
            ids, index, n = self._assemble(histories[b], target, cf)
            tpiece = self._target[target] if target is not None else []
            flat_ids += ids
            flat_ids += tpiece
            flat_index += index
            flat_index += [-1] * len(tpiece)
            lengths.append(len(ids) + len(tpiece))
            hist_len.append(n)
            tlen.append(len(tpiece))
        # One conversion of the unpadded tokens, then a vectorised scatter into the padded layout. Done
        # in numpy: it is single-threaded, whereas torch's intra-op threads stall for tens of ms on a
        # busy machine for arrays this small.
        lengths_a = np.asarray(lengths, dtype=np.int64)
        tlen_a = np.asarray(tlen, dtype=np.int64)
        width = int(lengths_a.max()) if bsz else 0
        valid = np.arange(width)[None, :] < lengths_a[:, None]
        input_ids = np.full((bsz, width), self.pad_token_id, dtype=np.int64)
        input_ids[valid] = flat_ids
        item_index = np.full((bsz, width), -1, dtype=np.int64)
        item_index[valid] = flat_index
        # Target positions: token k of sample b sits at column lengths[b] - tlen[b] + k.
        rows = np.repeat(np.arange(bsz, dtype=np.int64), tlen_a)
        first = np.cumsum(tlen_a) - tlen_a
        t0 = np.arange(int(tlen_a.sum()), dtype=np.int64) - np.repeat(first, tlen_a)
        cols = (lengths_a - tlen_a)[rows] + t0
        target_labels = input_ids[rows, cols]
        labels = np.full((bsz, width), IGNORE_INDEX, dtype=np.int64)
        labels[rows, cols] = target_labels
        as_t = torch.from_numpy
        return PromptBatch(
            input_ids=as_t(input_ids),
            attention_mask=as_t(valid.astype(np.int64)),
            labels=as_t(labels),
            item_index=as_t(item_index),
            lengths=as_t(lengths_a),
            history_len=torch.tensor(hist_len, dtype=torch.long),
            target_len=as_t(tlen_a),
            target_rows=as_t(rows),
            target_cols=as_t(cols),
            target_labels=as_t(target_labels),
            target_t=as_t(t0 + 1),
            target_size=as_t(tlen_a[rows]),
        )
