"""CETRec temporal indices and embeddings, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from recbole_llm.model.objectives import build_objective
from recbole_llm.model.temporal import (
    RotaryTemporalEmbedding,
    SinusoidalTemporalEmbedding,
    build_temporal_module,
    counterfactual_index,
    prompt_item_index,
    sinusoidal_table,
)

# A hand-written prompt: instruction (3 tokens), item A (2), ", " (1), item B (3), ", " (1), item C (1),
# "### Response:" (2). A is the earliest item, C the most recent.
PIECES = [3, 2, 1, 3, 1, 1, 2]
ORDINALS = [None, 0, None, 1, None, 2, None]
FACTUAL = [-1, -1, -1, 2, 2, -1, 1, 1, 1, -1, 0, -1, -1]


def test_prompt_item_index_by_hand():
    assert prompt_item_index(PIECES, ORDINALS) == FACTUAL
    assert prompt_item_index([4], [None]) == [-1] * 4
    with pytest.raises(ValueError, match="one entry per"):
        prompt_item_index([1, 2], [None])


def test_counterfactual_index_by_hand():
    factual = torch.tensor([FACTUAL])
    item_tok = [i for i, k in enumerate(FACTUAL) if k >= 0]
    for mode, value in (("earliest", 2), ("latest", 0), (5, 5)):
        cf = counterfactual_index(factual, mode=mode)[0].tolist()
        assert [cf[i] for i in item_tok] == [value] * len(item_tok)
        assert [cf[i] for i in range(len(FACTUAL)) if i not in item_tok] == [-1] * (
            len(FACTUAL) - len(item_tok)
        )
    # per-sample earliest index with explicit history lengths
    batch = torch.tensor([[2, 1, 0, -1], [0, -1, -1, -1]])
    assert counterfactual_index(batch, torch.tensor([3, 1])).tolist() == [[2, 2, 2, -1], [0, -1, -1, -1]]
    for bad in ("first", -1, True):
        with pytest.raises(ValueError, match="cetrec_cf_index"):
            counterfactual_index(batch, mode=bad)


def test_sinusoidal_values_by_hand():
    table = sinusoidal_table(torch.tensor([0, 1, 2]), 4)
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0]  # sin 0, cos 0, sin 0, cos 0
    # d = 4: θ_0 = 1, θ_1 = 10000^{-2/4} = 0.01
    expected_1 = [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]
    expected_2 = [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]
    assert torch.allclose(table[1], torch.tensor(expected_1), atol=1e-6)
    assert torch.allclose(table[2], torch.tensor(expected_2), atol=1e-6)
    # odd dimension keeps the interleaving and drops the last cos
    assert torch.allclose(
        sinusoidal_table(torch.tensor([1]), 3)[0],
        torch.tensor([math.sin(1), math.cos(1), math.sin(10000 ** (-2 / 3))]),
    )


def test_sinusoidal_module_adds_only_to_history_tokens():
    module = SinusoidalTemporalEmbedding(hidden_size=4, scale=0.5)
    x = torch.randn(1, len(FACTUAL), 4)
    index = torch.tensor([FACTUAL])
    out = module(x, index)
    for i, k in enumerate(FACTUAL):
        if k < 0:
            assert torch.equal(out[0, i], x[0, i])
        else:
            assert torch.allclose(out[0, i] - x[0, i], 0.5 * sinusoidal_table(torch.tensor(k), 4), atol=1e-6)
    # item C (k = 0) gets 0.5 * [0, 1, 0, 1]
    assert torch.allclose(out[0, 10] - x[0, 10], torch.tensor([0.0, 0.5, 0.0, 0.5]))


def test_rope_by_hand_identity_and_norms():
    module = RotaryTemporalEmbedding(hidden_size=4)
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]] * 3])
    out = module(x, torch.tensor([[0, 1, -1]]))
    assert torch.equal(out[0, 0], x[0, 0])  # index 0 is the identity
    assert torch.equal(out[0, 2], x[0, 2])  # non-history token untouched
    c1, s1, c2, s2 = math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)
    expected = [1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c2 - 4 * s2, 3 * s2 + 4 * c2]
    assert torch.allclose(out[0, 1], torch.tensor(expected), atol=1e-6)

    big = RotaryTemporalEmbedding(hidden_size=64)
    y = torch.randn(2, 9, 64)
    idx = torch.randint(-1, 10, (2, 9))
    rotated = big(y, idx)
    assert torch.allclose(rotated.norm(dim=-1), y.norm(dim=-1), atol=1e-5)
    # each 2-D pair keeps its own norm too (block-diagonal rotation)
    assert torch.allclose(
        rotated.unflatten(-1, (32, 2)).norm(dim=-1), y.unflatten(-1, (32, 2)).norm(dim=-1), atol=1e-5
    )
    assert torch.equal(rotated[idx < 0], y[idx < 0])
    assert not torch.allclose(rotated[idx > 0], y[idx > 0])


def test_factual_and_counterfactual_differ_only_on_history_tokens():
    x = torch.randn(1, len(FACTUAL), 8)
    factual = torch.tensor([FACTUAL])
    cf = counterfactual_index(factual)
    for module in (SinusoidalTemporalEmbedding(8), RotaryTemporalEmbedding(8)):
        a, b = module(x, factual), module(x, cf)
        same = (a == b).all(-1)[0].tolist()
        # tokens of item A (already at the earliest index 2) and non-item tokens agree; B and C change
        assert same == [k in (-1, 2) for k in FACTUAL]


def test_dtype_gradients_and_empty_state():
    module = RotaryTemporalEmbedding(16)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    idx = torch.tensor([[-1, 0, 1, 2, -1], [3, 3, -1, -1, -1]])
    assert module(x, idx).dtype == torch.bfloat16
    assert SinusoidalTemporalEmbedding(16)(x, idx).dtype == torch.bfloat16
    x32 = torch.randn(2, 5, 16, requires_grad=True)
    SinusoidalTemporalEmbedding(16)(x32, idx).sum().backward()
    assert torch.equal(x32.grad, torch.ones_like(x32))
    for m in (module, SinusoidalTemporalEmbedding(16)):
        assert list(m.parameters()) == [] and m.state_dict() == {}


def test_shape_and_bound_errors():
    with pytest.raises(ValueError, match="do not match"):
        RotaryTemporalEmbedding(8)(torch.zeros(1, 3, 8), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temporal_max_items"):
        SinusoidalTemporalEmbedding(8, max_items=3)(torch.zeros(1, 2, 8), torch.tensor([[3, -1]]))
    with pytest.raises(ValueError, match="even hidden_size"):
        RotaryTemporalEmbedding(7)


def test_build_from_config():
    cetrec = build_objective({"objective": "cetrec"}).temporal_embedding  # the objective's default
    assert isinstance(build_temporal_module({}, 8, default=cetrec), RotaryTemporalEmbedding)
    assert (
        build_temporal_module({}, 8, default=build_objective({"objective": "sft"}).temporal_embedding) is None
    )
    assert build_temporal_module({"temporal_embedding": "none"}, 8, default=cetrec) is None
    assert build_temporal_module({}, 8, default=cetrec).kind == "rope"
    sin = build_temporal_module(
        {"objective": "cetrec", "temporal_embedding": "SinPE", "temporal_scale": 0.1}, 8
    )
    assert isinstance(sin, SinusoidalTemporalEmbedding) and sin.scale == 0.1 and sin.kind == "sinpe"
    with pytest.raises(ValueError, match="none, sinpe, rope"):
        build_temporal_module({"temporal_embedding": "alibi"}, 8)
