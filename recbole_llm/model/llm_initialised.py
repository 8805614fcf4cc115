"""CFT's LLM-initialised baselines SASRec* and GRU4Rec* (CFT §4.1.3, Table 3): RecBole's SASRec and GRU4Rec
whose item embedding table starts from the LLM's encoding of each item title.

RecBole model names cannot hold ``*``, so they are ``SASRecLLM`` and ``GRU4RecLLM``. Everything else is
RecBole's model: the same forward pass, loss, ``full_sort_predict``, split, metrics and trainer as SASRec
and GRU4Rec (their YAML values are repeated in ``properties/model/<Model>LLM.yaml``).

* **Title encoding** is BIGRec grounding's (:func:`~recbole_llm.model.grounding.embed_item_titles`): the
  last-layer hidden state of the title's last token (the D3 target piece ``Title"`` + newline, EOS
  stripped), from ``llm_path`` resolved as LLMGenRec resolves it (default: the packaged SmolLM2).
* **Sizes**: when the LLM's hidden size differs from the item embedding size (SASRec ``hidden_size``,
  GRU4Rec ``embedding_size``), a learned bias-free linear projection maps the table (padding row stays
  0); when they are equal, the table itself is the embedding.
* ``llm_init_trainable`` (default True: the table only *initialises* the embedding and is fine-tuned);
  False keeps the LLM table fixed (the projection, if any, still learns).
* **Cache**: the table is computed once per (dataset titles, llm, pooling) and stored in
  ``<checkpoint_dir>/llm_item_tables/`` (plain tensors, loaded with ``weights_only``), so a second run,
  ``--evaluate`` or a tuning trial does not encode the catalogue again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from recbole.model.sequential_recommender import GRU4Rec, SASRec
from torch import Tensor, nn

from recbole_llm.model.backbone import load_backbone, resolve_llm_path
from recbole_llm.model.grounding import embed_item_titles
from recbole_llm.model.prompt import PromptBuilder
from recbole_llm.utils.checkpoint import safe_torch_load
from recbole_llm.utils.config_access import config_get
from recbole_llm.utils.io import atomic_write

logger = logging.getLogger(__name__)

POOLING = "last_token"  # what embed_item_titles does; part of the cache key
CACHE_FOLDER = "llm_item_tables"

__all__ = ["GRU4RecLLM", "LLMItemEmbedding", "SASRecLLM", "llm_item_table"]


class LLMItemEmbedding(nn.Module):
    """An ``nn.Embedding`` stand-in whose ``weight`` is ``projection(table)`` (or ``table``), row 0 zero.

    RecBole's models read ``item_embedding(ids)`` and ``item_embedding.weight`` (full-sort scores): both
    see the same table. Row 0 (padding) is multiplied by 0, so it stays 0 and gets no gradient.
    """

    def __init__(self, table: Tensor, embedding_dim: int, trainable: bool = True) -> None:
        super().__init__()
        self.table = nn.Parameter(table.detach().clone().float(), requires_grad=trainable)
        self.embedding_dim = embedding_dim
        self.padding_idx = 0
        same = table.shape[1] == embedding_dim
        self.projection = None if same else nn.Linear(table.shape[1], embedding_dim, bias=False)
        keep = torch.ones(table.shape[0], 1)
        keep[0] = 0.0
        self.register_buffer("keep", keep, persistent=False)

    @property
    def weight(self) -> Tensor:
        table = self.table * self.keep
        return table if self.projection is None else self.projection(table)

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight)


def _llm_identity(llm: str) -> list:
    """The LLM folder's files (name, size, mtime): a model rewritten in the same folder gets a new table."""
    folder = Path(llm)
    if not folder.is_dir():
        return [llm]  # a hub id
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in folder.iterdir() if f.is_file())


def _cache_file(config: Any, titles: list[str], llm: str) -> Path:
    """``<checkpoint_dir>/llm_item_tables/<dataset>-<hash>.pt``; the hash covers titles, LLM and pooling."""
    identity = {"llm": llm, "files": _llm_identity(llm), "pooling": POOLING, "titles": titles}
    key = json.dumps(identity, ensure_ascii=False)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    folder = Path(config_get(config, "checkpoint_dir", "saved")) / CACHE_FOLDER
    return folder / f"{config_get(config, 'dataset', 'data')}-{digest}.pt"


def encode_titles(config: Any, titles: list[str]) -> Tensor:
    """The LLM's title table ``[n_items, H]`` (row 0 = padding = 0), computed in batches."""
    llm, tokenizer = load_backbone(config)
    llm.eval()
    prompts = PromptBuilder(tokenizer, titles)  # the default (D3) target piece, as LLMGenRec grounds
    table = embed_item_titles(
        llm,
        prompts.all_target_sequences(),
        pad_token_id=prompts.pad_token_id,
        eos_token_id=prompts.eos_token_id,
        progress=bool(config_get(config, "show_progress", False)),
    ).cpu()
    return torch.cat([table.new_zeros(1, table.shape[1]), table])


def llm_item_table(config: Any, titles: list[str]) -> Tensor:
    """The cached LLM title table for ``titles`` (indexed by item id), encoding it on first use."""
    llm, _ = resolve_llm_path(config)
    file = _cache_file(config, titles, llm)
    if file.is_file():
        logger.info("LLM item table read from %s", file)
        return safe_torch_load(file)["table"]
    table = encode_titles(config, titles)
    atomic_write(file, lambda tmp: torch.save({"table": table, "llm": llm, "pooling": POOLING}, tmp))
    logger.info("LLM item table [%d x %d] written to %s", *table.shape, file)
    return table


class LLMInitialisedMixin:
    """Replaces the RecBole model's ``item_embedding`` (built and initialised by its ``__init__``) with
    :class:`LLMItemEmbedding` of the same size, started from the LLM's title table."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)  # builds item_embedding and runs self.apply(self._init_weights)
        titles = dataset.item_titles(config_get(config, "title_field", "title"))
        table = llm_item_table(config, titles)
        trainable = bool(config_get(config, "llm_init_trainable", True))
        self.item_embedding = LLMItemEmbedding(table, self.item_embedding.embedding_dim, trainable)


class SASRecLLM(LLMInitialisedMixin, SASRec):
    """CFT's SASRec*: SASRec with item embeddings initialised from the LLM's title encodings."""


class GRU4RecLLM(LLMInitialisedMixin, GRU4Rec):
    """CFT's GRU4Rec*: GRU4Rec with item embeddings initialised from the LLM's title encodings."""
