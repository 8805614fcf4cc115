"""CETRec's RoPE read as a rotary offset in attention (temporal_embedding: rope_attention).

History token t of item k sits at position ``t + k``; the LLM's rotary embedding then makes every
attention score depend on ``(t_n + k_n) − (t_m + k_m)`` only (CETRec Eq. 5).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recbole_llm.model.decoding import constrained_beam_search
from recbole_llm.model.temporal import AttentionRotaryTemporal, build_temporal_module
from recbole_llm.model.trie import TitleTrie
from tests.test_faithfulness import _inter, _model
from tests.test_llm_gen_rec import _run

EOS = 2
CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    eos_token_id=EOS,
    pad_token_id=EOS,
    initializer_range=0.2,
)


def _llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation=attn)).eval()


def test_offsets_by_hand_and_embeddings_untouched():
    module = build_temporal_module({"temporal_embedding": "rope_attention"}, 32)
    assert isinstance(module, AttentionRotaryTemporal) and module.kind == "rope_attention"
    index = torch.tensor([[-1, -1, 2, 2, -1, 1, -1, 0, 0, -1]])
    assert module.position_offset(index).tolist() == [[0, 0, 2, 2, 0, 1, 0, 0, 0, 0]]
    x = torch.randn(1, 10, 32)
    assert torch.equal(module(x, index), x)
    # the attention reading's positions t + k, by hand
    positions = torch.arange(10) + module.position_offset(index)[0]
    assert positions.tolist() == [0, 1, 4, 5, 4, 6, 6, 7, 8, 9]


def test_attention_scores_depend_only_on_position_plus_index_differences():
    model = _llama("eager")
    ids = torch.tensor([[5, 9, 11, 13, 7, 21, 30, 31]])
    index = torch.tensor([[-1, 1, 1, -1, 0, 0, -1, -1]])
    module = AttentionRotaryTemporal(32)
    factual = torch.arange(8)[None] + module.position_offset(index)

    def attentions(positions: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return model(ids, position_ids=positions, output_attentions=True).attentions

    base = attentions(factual)
    # every (t + k) shifted by the same amount: all scores unchanged (only differences matter)
    for a, b in zip(base, attentions(factual + 7)):
        assert torch.allclose(a, b, atol=1e-5)
    # a different difference between the two items' tokens (counterfactual: one index for all) changes them
    cf = torch.arange(8)[None] + module.position_offset(torch.where(index >= 0, 1, -1))
    assert not torch.allclose(base[0], attentions(cf)[0], atol=1e-4)
    # ... and so does plain positions (the temporal index is really used)
    assert not torch.allclose(base[0], attentions(torch.arange(8)[None])[0], atol=1e-4)


def test_beam_search_positions_carry_the_offset_and_generation_continues():
    model = _llama()
    trie = TitleTrie.build([[3, 4, EOS], [3, 6, EOS], [8, EOS]], [1, 2, 3])
    header = [40, 41, 42]
    prompts = [header + [10, 11, 12, 50], header + [13, 14, 50]]
    index = [[-1] * 3 + [1, 1, 0, -1], [-1] * 3 + [0, 0, -1]]
    module = AttentionRotaryTemporal(32)
    emb = model.get_input_embeddings()
    calls: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        calls.append(kwargs["position_ids"].clone())

    kw = dict(num_beams=2, batch_size=2, prompt_item_index=index, embed_fn=lambda ids, ix: emb(ids))
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        shared = constrained_beam_search(
            model, prompts, trie, position_offset_fn=module.position_offset, **kw
        )
    finally:
        handle.remove()
    # shared header (3 tokens, no item) once, then the left-padded rest: t + k for each real token
    assert calls[0].tolist() == [[0, 1, 2]]
    assert calls[1][0, -3:].tolist() == [3, 4, 5]  # [13, 14, 50]: k = 0, 0, -1
    assert calls[1][1].tolist() == [4, 5, 5, 6]  # [10, 11, 12, 50]: t = 3..6, k = 1, 1, 0, -1
    # generated tokens carry no offset: they continue at each prompt's length (6 and 7), step by step
    assert calls[2][:, 0].tolist() == [6, 6, 7, 7] and calls[3][:, 0].tolist() == [7, 7, 8, 8]
    plain = constrained_beam_search(
        model,
        prompts,
        trie,
        position_offset_fn=module.position_offset,
        share_prompt_prefix=False,
        kv_cache="dynamic",
        **kw,
    )
    assert torch.equal(shared[0], plain[0]) and torch.allclose(shared[1], plain[1], atol=1e-5)
    without = constrained_beam_search(model, prompts, trie, **kw)
    assert not torch.allclose(without[1], shared[1], atol=1e-5)


def test_training_forward_uses_t_plus_k_positions(tmp_path, monkeypatch, tiny_model_path):
    model, _ = _model(
        tmp_path, monkeypatch, tiny_model_path, objective="cetrec", temporal_embedding="rope_attention"
    )
    seen: list[torch.Tensor] = []
    rotary = model.llm.get_decoder().rotary_emb

    def hook(_module, args, kwargs):
        seen.append((args[1] if len(args) > 1 else kwargs["position_ids"]).clone())

    handle = rotary.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.train()
        model.forward(_inter(model, [[1, 2, 3], [2]], [4, 5]))
    finally:
        handle.remove()
    batch = model.prompts.build([[1, 2, 3], [2]], [4, 5])
    width = batch.input_ids.shape[1]
    expected = torch.arange(width)[None] + batch.item_index.clamp(min=0)
    assert torch.equal(seen[0].cpu(), expected)
    # the counterfactual pass (every item at one index) reuses the instruction's cache and continues from
    # position n with its own t + k
    histories, targets = [[1, 2, 3], [2]], [4, 5]
    cf = model.objective.counterfactual_inputs(model.prompts, batch, histories, targets)
    width_cf = cf.batch.input_ids.shape[1]
    n = width_cf - seen[1].shape[1]
    assert 0 < n < width_cf
    assert torch.equal(seen[1].cpu(), torch.arange(n, width_cf)[None] + cf.item_index[:, n:].clamp(min=0))
    assert not torch.equal(cf.item_index, batch.item_index[:, :width_cf])


def test_rope_attention_trains_and_decodes_end_to_end(workspace, monkeypatch):
    result = _run(workspace, monkeypatch, objective="cetrec", temporal_embedding="rope_attention")
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert 0.0 <= result["test_result"]["hit@10"] <= 1.0


def test_bigrec_with_rope_attention_is_refused_before_the_backbone_loads(monkeypatch):
    """Free generation cannot move position ids: the pair is refused at model construction (no training lost)."""
    from recbole_llm.model import llm_gen_rec
    from recbole_llm.utils.errors import UserError

    def no_backbone(_config):
        raise AssertionError("the backbone was loaded before the refusal")

    monkeypatch.setattr(llm_gen_rec, "load_backbone", no_backbone)
    config = {"objective": "cetrec", "decoder": "bigrec", "temporal_embedding": "rope_attention"}
    fake = type("Config", (dict,), {"__getitem__": lambda self, k: self.get(k)})(config)
    monkeypatch.setattr(llm_gen_rec.SequentialRecommender, "__init__", lambda self, c, d: None)
    with pytest.raises(UserError, match="decoder=bigrec with temporal_embedding=rope_attention"):
        llm_gen_rec.LLMGenRec(fake, None)
    llm_gen_rec.check_decoder_temporal("bigrec", "rope")  # rope / sinpe enter free generation's embeddings
    llm_gen_rec.check_decoder_temporal("d3", "rope_attention")
