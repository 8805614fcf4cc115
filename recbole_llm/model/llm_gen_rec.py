"""LLMGenRec: a causal LM fine-tuned to write the next item's title, ranked by constrained decoding.

One model serves every method of the papers: the objective (sft, pos, cft, cetrec, igd) only changes
how token losses are weighted and combined, the decoder (d3, constrained, bigrec) only changes how
beams are scored. There is exactly one forward pass here; it computes the LM head only at the target
positions (the prompt's logits are never needed), which saves most of the head's cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm.data.dataset import histories_of
from recbole_llm.model.backbone import load_backbone
from recbole_llm.model.decoding import (
    DecodingSettings,
    build_scorers,
    configured_scorers,
    constrained_beam_search,
    fill_by_popularity,
    history_mask,
    leaves_to_items,
    ranked_item_scores,
    ranking_to_scores,
)
from recbole_llm.model.grounding import embed_item_titles, ground_generations
from recbole_llm.model.objectives import (
    CAUSAL,
    build_objective,
    gather_token_weights,
    item_token_weights,
    weighted_total,
)
from recbole_llm.model.prompt import PromptBuilder
from recbole_llm.model.temporal import build_temporal_module, temporal_kind
from recbole_llm.model.trie import TitleTrie
from recbole_llm.utils.checkpoint import load_trainable, save_trainable
from recbole_llm.utils.errors import UserError

CHECKPOINT_FILE = "trainable.safetensors"

__all__ = ["CHECKPOINT_FILE", "LLMGenRec"]


def check_decoder_temporal(decoder: str, temporal: str) -> None:
    """Refuse, before any weights load, a decoder that cannot read the model's temporal input."""
    if decoder == "bigrec" and temporal == "rope_attention":
        raise UserError(
            "decoder=bigrec with temporal_embedding=rope_attention: rope_attention moves the history tokens' "
            "position ids, which free generation (HF generate) cannot take. Decode with decoder=d3 or "
            "constrained, or train with temporal_embedding=rope or sinpe."
        )


class LLMGenRec(SequentialRecommender):
    """Generative LLM recommender (BIGRec / D3 paradigm) with pluggable objectives and decoders."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.objective = build_objective(config)
        self.decoding = DecodingSettings.from_config(config, self.objective)  # validated once, here
        check_decoder_temporal(
            self.decoding.decoder, temporal_kind(config, self.objective.temporal_embedding)
        )
        # exclude_history (overall.yaml, validated by Config): never recommend an item of the history.
        self.exclude_history = bool(config["exclude_history"]) if "exclude_history" in config else False
        self.extra_scorers = configured_scorers(
            config
        )  # beam scorers of your own that the config switches on
        self.llm, self.tokenizer = load_backbone(config)
        titles = dataset.item_titles(config["title_field"] or "title")
        self.prompts = PromptBuilder.from_config(config, self.tokenizer, titles, _category(config))

        # Everything per item is computed once here, never per training step.
        counts = dataset.target_counts().double()
        self.register_buffer("popularity", counts.float(), persistent=False)
        sequences = self.prompts.all_target_sequences()
        all_items = list(range(1, len(sequences)))
        # IG: item probability = frequency as a training target, over the titles of all items (IGD).
        self.ig_trie = TitleTrie.build([sequences[i] for i in all_items], all_items, item_weight=counts[1:])
        if self.decoding.trie_items == "all":
            self.trie = self.ig_trie
        else:  # train_targets
            keep = [i for i in all_items if counts[i] > 0]
            self.trie = TitleTrie.build([sequences[i] for i in keep], keep, item_weight=counts[keep])
        self._item_tables(sequences)
        self.temporal = build_temporal_module(
            config, self.llm.config.hidden_size, default=self.objective.temporal_embedding
        )
        self.objective.check_temporal("none" if self.temporal is None else self.temporal.kind)
        self._fill_order = torch.argsort(-counts[1:], stable=True) + 1  # popularity, ties by item id

    # ----------------------------------------------------------------- per-item tables
    def _item_tables(self, sequences: list[list[int]]) -> None:
        """Per-item token weights of every loss term and their totals (the loss denominators)."""
        items = torch.arange(1, len(sequences))
        ig, _ = self.ig_trie.item_token_ig(items)
        lengths = torch.tensor([0] + [len(sequences[i]) for i in items.tolist()])
        token_ig = torch.zeros(len(sequences), ig.shape[1], dtype=torch.float32)
        token_ig[1:] = ig.float()
        self.item_lengths = lengths
        self.item_token_ig = token_ig
        self._weights = item_token_weights(self.objective, lengths, token_ig)
        self._weight_totals = {name: table.sum(dim=1) for name, table in self._weights.items()}
        self._valid_weights = item_token_weights(self.objective, lengths, token_ig, validation=True)
        self._valid_totals = {name: table.sum(dim=1) for name, table in self._valid_weights.items()}

    # Set by the trainer (``log_ig_loss``): an ``IGLossTracker`` fed by every training forward pass.
    ig_loss_tracker = None

    @property
    def loss_coefficients(self) -> dict[str, float]:
        return self.objective.coefficients

    def loss_denominators(self, interaction) -> dict[str, torch.Tensor]:
        """Total token weight of each active loss term over the samples (known before any forward pass)."""
        targets = interaction[self.POS_ITEM_ID].cpu()
        totals = self._weight_totals if self.training else self._valid_totals
        active = self.objective.active_terms(self.training)
        out = {name: totals[name][targets].sum() for name in active}
        if CAUSAL in active:  # samples whose counterfactual equals the factual input leave L_c's normaliser
            kept = torch.tensor(self.prompts.kept_counts(self.histories(interaction), targets.tolist()))
            out[CAUSAL] = (totals[CAUSAL][targets] * self.objective.counterfactual_differs(kept)).sum()
        return out

    def sample_lengths(self, dataset) -> np.ndarray:
        """Token length of every sample's training prompt (for length-grouped batching)."""
        inter = dataset.inter_feat
        return self.prompts.lengths(self.histories(inter), inter[self.POS_ITEM_ID].tolist())

    # ----------------------------------------------------------------- forward
    def histories(self, interaction) -> list[list[int]]:
        """Each sample's history (item ids, oldest first): the prompt builder's input."""
        return histories_of(interaction, self.ITEM_SEQ, self.ITEM_SEQ_LEN)

    def _embed(self, input_ids: torch.Tensor, item_index: torch.Tensor | None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        if self.temporal is not None and item_index is not None:
            embeds = self.temporal(embeds, item_index.to(embeds.device))
        return embeds

    def _position_offset(self, item_index: torch.Tensor | None) -> torch.Tensor | None:
        """Added to the position ids (``temporal_embedding: rope_attention``), else None."""
        if self.temporal is None or item_index is None:
            return None
        offset = self.temporal.position_offset(item_index)
        return None if offset is None else offset.to(self.llm.device)

    def _target_logits(self, batch, item_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[T, V]`` at the positions that predict the target tokens, in (sample, position) order.

        Only these rows go through the LM head: the prompt's logits are never needed.
        """
        return self._run(batch, item_index)[0]

    def _run(self, batch, item_index=None, past: tuple[Any, int] | None = None, keep_cache: bool = False):
        """``(target logits, KV cache or None)``. ``past = (cache, n)`` runs only the tokens after the first
        ``n`` of every prompt, whose keys/values are in ``cache``; ``keep_cache`` returns this pass's cache."""
        device = self.llm.device
        index = batch.item_index if item_index is None else item_index
        n = 0 if past is None else past[1]
        embeds = self._embed(batch.input_ids[:, n:].to(device), index[:, n:])
        mask = batch.attention_mask[:, n:].to(device)
        kwargs: dict[str, Any] = {"use_cache": True} if keep_cache else {}
        offset = self._position_offset(index[:, n:])
        if past is not None or offset is not None:
            positions = torch.arange(n, n + embeds.shape[1], device=device).expand(embeds.shape[0], -1)
            kwargs["position_ids"] = positions if offset is None else positions + offset
        if past is not None:
            mask = torch.cat([mask.new_ones(mask.shape[0], n), mask], 1)
            kwargs.update(past_key_values=past[0], use_cache=True)
        out = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        rows, cols = batch.predict_positions
        logits = self.llm.get_output_embeddings()(
            out.last_hidden_state[rows.to(device), (cols - n).to(device)]
        )
        return logits, (out.past_key_values if keep_cache else None)

    def _counterfactual_logits(
        self, batch, cache, cf_batch, cf_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The counterfactual pass, reusing the factual pass's ``cache`` for the leading tokens both prompts
        share (CFT: the instruction, a third of an ml-100k prompt and most of its counterfactual one; CETRec:
        everything up to the first history item whose temporal index changes). Causal attention makes their
        keys/values identical, so only the rest of the counterfactual prompt runs."""
        cf_index = cf_batch.item_index if cf_index is None else cf_index
        n = 0
        if cache is not None and not any(getattr(cache, "is_sliding", [True])):  # full-attention layers only
            w = min(batch.input_ids.shape[1], cf_batch.input_ids.shape[1])
            same = (  # row by row: each row's cache serves only its own counterfactual row
                (batch.input_ids[:, :w] == cf_batch.input_ids[:, :w])
                & (batch.attention_mask[:, :w] == cf_batch.attention_mask[:, :w])
                & (batch.item_index[:, :w] == cf_index[:, :w].to(batch.item_index.device))
            ).all(dim=0)
            n = min(int(same.long().cumprod(0).sum()), int(cf_batch.target_cols.min()) - 1)
        if n <= 0:
            return self._target_logits(cf_batch, item_index=cf_index)
        cache.crop(n - cache.get_seq_length())  # keep the first n positions
        return self._run(cf_batch, cf_index, past=(cache, n))[0]

    def forward(self, interaction) -> dict[str, torch.Tensor]:
        """Numerators of every active loss term for a micro-batch (the trainer divides by batch totals)."""
        histories = self.histories(interaction)
        targets = interaction[self.POS_ITEM_ID].tolist()
        batch = self.prompts.build(histories, targets)
        # With a counterfactual pass, keep this pass's KV cache: both prompts start with the same instruction.
        share = (
            self.training and self.objective.needs_counterfactual and not self.llm.is_gradient_checkpointing
        )
        logits, cache = self._run(batch, keep_cache=share)
        device = logits.device
        token_items = torch.tensor(targets)[batch.target_rows]
        weights = gather_token_weights(
            self._weights if self.training else self._valid_weights, token_items, batch.target_t
        )
        if self.training and self.ig_loss_tracker is not None:
            # IGD §4.2.1 diagnostics: unweighted CE of the factual pass per token, with its IG (detached).
            self.ig_loss_tracker.update_from_logits(
                logits, batch.target_labels.to(device), self.item_token_ig[token_items, batch.target_t - 1]
            )
        logits_cf = None
        if CAUSAL in weights and self.training:
            differs = self.objective.counterfactual_differs(batch.history_len)
            weights[CAUSAL] = weights[CAUSAL] * differs[batch.target_rows].to(weights[CAUSAL].dtype)
        if self.training and self.objective.needs_counterfactual:
            cf = self.objective.counterfactual_inputs(self.prompts, batch, histories, targets)
            logits_cf = self._counterfactual_logits(batch, cache, cf.batch, cf.item_index)
        return self.objective.combine(
            logits,
            batch.target_labels.to(device),
            batch.target_t.to(device),
            batch.target_size.to(device),
            logits_cf=logits_cf,
            weights={k: w.to(device) for k, w in weights.items()},
            training=self.training,
        )

    def calculate_loss(self, interaction) -> torch.Tensor:
        """RecBole API: the objective's loss on one batch, normalised over that batch."""
        return weighted_total(
            self.forward(interaction), self.loss_denominators(interaction), self.loss_coefficients
        )

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def recommend(self, interaction, k: int) -> torch.Tensor:
        """Ranked item ids ``[B, k]`` for each sample's history (``-1`` pads short lists unless filled)."""
        return self.recommend_histories(self.histories(interaction), k).to(interaction[self.ITEM_SEQ].device)

    def recommend_scored(self, interaction, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ranked item ids [B, k], their beam scores [B, k])``: what the saved rankings record."""
        ranked, scores = self.rank_histories(self.histories(interaction), k)
        return ranked.to(interaction[self.ITEM_SEQ].device), scores

    @torch.no_grad()
    def recommend_histories(
        self, histories: list[list[int]], k: int, without_history: bool = False
    ) -> torch.Tensor:
        """Ranked item ids ``[U, k]`` for histories of internal item ids (oldest first).

        ``without_history`` decodes from the counterfactual prompt without the history (CFT's analysis).
        """
        return self.rank_histories(histories, k, without_history)[0]

    @torch.no_grad()
    def rank_histories(
        self, histories: list[list[int]], k: int, without_history: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ranked item ids [U, k], scores [U, k])``: each item's final beam score (the scorers' total,
        :func:`ranked_item_scores`); ``NaN`` where the decoder gives none (BIGRec's grounding, padding,
        popularity fill)."""
        cf = True if without_history else None
        prompts = self.prompts.prompt_ids_batch(histories, counterfactual=cf)
        settings = self.decoding
        exclude = history_mask(histories, self.n_items) if self.exclude_history else None
        item_index = None
        if self.temporal is not None:
            item_index = [self.prompts.prompt_item_index(h, counterfactual=cf) for h in histories]
        if settings.decoder == "bigrec":
            ranked = self._bigrec_rank(prompts, k, exclude, item_index)
            scores = torch.full(ranked.shape, float("nan"))
        else:
            ensemble = self._ensemble_probs(histories) if settings.uses_ensemble else None
            leaves, leaf_scores = constrained_beam_search(
                self.llm,
                prompts,
                self.trie,
                num_beams=settings.num_beams,
                pad_token_id=self.prompts.pad_token_id,
                batch_size=settings.decode_batch_size,
                prompt_item_index=item_index,
                embed_fn=self._embed if self.temporal is not None else None,
                position_offset_fn=self._position_offset if self.temporal is not None else None,
                scorers=build_scorers(settings, ensemble, self.extra_scorers),
                exclude_items=histories if self.exclude_history else None,
            )
            ranked = leaves_to_items(self.trie, leaves, k, exclude=exclude)
            scores = ranked_item_scores(self.trie, leaves, leaf_scores, ranked)
        if settings.fill == "popularity":
            filled = fill_by_popularity(ranked, self._fill_order, exclude)
            scores = torch.where(filled == ranked, scores, torch.full_like(scores, float("nan")))
            ranked = filled
        return ranked, scores

    def hyper_parameters(self) -> dict[str, Any]:
        """The values this model really uses, paper defaults resolved (``beta: ~`` -> 0.25 for cft).

        Recorded in every results JSON (``hyper_parameters``) so that runs can be compared by what they
        did, not by what was typed; ``compare`` labels rows with these values.
        """
        hp = dict(self.objective.hparams())
        hp.update(
            temporal_embedding="none" if self.temporal is None else self.temporal.kind,
            **self.decoding.recorded(),
        )
        for scorer in self.extra_scorers:
            hp.update(scorer.recorded())
        return hp

    def _ensemble_probs(self, histories: list[list[int]]) -> torch.Tensor:
        """D3 ensemble: the traditional model's next-item probabilities ``[U, n_items]`` for each history."""
        model = self._ensemble_model
        if model is None:
            raise ValueError(
                "ensemble_weight < 1 decodes with a traditional model: pass it to set_ensemble_model "
                "(recbole_llm.ensemble.load_ensemble_model loads ensemble_checkpoint; load_run does both)."
            )
        width = self.max_seq_length
        seq = torch.zeros((len(histories), width), dtype=torch.long)
        for row, h in enumerate(histories):
            h = h[-width:]
            seq[row, : len(h)] = torch.tensor(h)
        lengths = torch.tensor([max(1, min(len(h), width)) for h in histories])
        inter = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
        scores = model.full_sort_predict(inter).view(len(histories), -1).float()
        scores[:, 0] = -float("inf")
        if self.exclude_history:  # the guidance's mass only over the items the search may still return
            scores = scores.masked_fill(
                history_mask(histories, scores.shape[1], scores.device), -float("inf")
            )
        return torch.softmax(scores, dim=-1)

    _ensemble_model = None

    def set_ensemble_model(self, model: torch.nn.Module) -> None:
        """Attach the D3 ensemble's frozen traditional model *outside* the module tree.

        As a submodule it would join the optimiser's parameters, every checkpoint and ``.to(device)``;
        it is decoding-time guidance from another run's checkpoint, so it stays frozen, on the CPU
        (its probabilities are moved to the decoding device) and out of our checkpoints.
        """
        object.__setattr__(self, "_ensemble_model", model.requires_grad_(False).eval())

    def _bigrec_rank(
        self,
        prompts: list[list[int]],
        k: int,
        exclude: torch.Tensor | None = None,
        item_index: list[list[int]] | None = None,
    ) -> torch.Tensor:
        """BIGRec: free beam search (from the prompt's temporal input embeddings when there are any, as
        CETRec §5.1.4 evaluates), then L2 grounding of each generation to every item title
        (``exclude [U, n_items]``: items masked at grounding time, ``exclude_history``)."""
        check_decoder_temporal("bigrec", "none" if self.temporal is None else self.temporal.kind)
        embed_fn = None
        if item_index is not None:

            def embed_fn(ids: torch.Tensor, row: int) -> torch.Tensor:
                return self._embed(ids, torch.tensor([item_index[row]]))

        ranked = ground_generations(
            self.llm,
            prompts,
            self._title_embeddings(),
            k,
            n_gen=self.decoding.bigrec_generations,
            rule=self.decoding.bigrec_rank,
            max_new_tokens=self.trie.max_depth,
            pad_token_id=self.prompts.pad_token_id,
            eos_token_id=self.prompts.eos_token_id,
            exclude=None if exclude is None else exclude[:, 1:],
            embed_fn=embed_fn,
        )
        return torch.where(ranked >= 0, ranked + 1, -1).cpu()  # row 0 of the title table = item 1

    def _title_embeddings(self) -> torch.Tensor:
        """Last-layer hidden state of every item title's last token, EOS excluded as in BIGRec (cached until
        the weights change)."""
        if self._title_emb is None:
            self._title_emb = embed_item_titles(
                self.llm,
                self.prompts.all_target_sequences(),
                pad_token_id=self.prompts.pad_token_id,
                eos_token_id=self.prompts.eos_token_id,
            )
        return self._title_emb

    _title_emb = None

    def train(self, mode: bool = True):
        if mode:
            self._title_emb = None  # weights are about to change
        return super().train(mode)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """RecBole API: scores ``[B, n_items]`` whose order is the ranked list (reads only the history); items
        outside it get finite scores below it in training-popularity order (ties by id), never all −inf."""
        ranked = self.recommend(interaction, self.decoding.num_beams)
        return ranking_to_scores(ranked, self.n_items, self._fill_order)

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Trainable weights (full weights or LoRA adapters, plus any trainable extras) as safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return save_trainable(self, folder / CHECKPOINT_FILE, config=_identity_config(self.config))

    def load_checkpoint(self, folder: str | Path) -> None:
        """Load weights written by :meth:`save_checkpoint`; a clear error if missing, corrupt or mismatched."""
        path = Path(folder)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No checkpoint at {path}: pass a run's `best` or `last` folder under saved/ (or its results JSON)."
            )
        load_trainable(self, path, config=_identity_config(self.config))
        self._title_emb = None


def _identity_config(config) -> dict[str, Any]:
    """The config keys that decide the checkpoint's tensor layout (named in mismatch errors)."""
    keys = ("model", "llm_path", "tuning", "lora_r", "lora_alpha", "lora_target_modules")
    return {k: config[k] for k in keys}


def _category(config) -> dict[str, str]:
    """Category words for the prompt: config ``category`` or the prepared dataset's metadata."""
    if config["category"]:
        cat = config["category"]
        return cat if isinstance(cat, dict) else {"singular": str(cat), "plural": f"{cat}s"}
    meta = Path(config["data_path"]) / f"{config['dataset']}.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if "category" in info:
            return info["category"]
    return {"singular": "item", "plural": "items"}
