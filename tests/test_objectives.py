"""Token-weighted objectives: weights by hand, SFT equivalences, causal loss, effective-batch normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_llm.model.objectives import (
    CAUSAL,
    NORMAL,
    OBJECTIVES,
    beta_from_beta_prime,
    build_objective,
    causal_loss_terms,
    gather_token_weights,
    ig_weights,
    item_token_weights,
    linear_decay_weights,
    position_decay_weights,
    token_cross_entropy,
    total_loss,
    weighted_loss_sum,
)


def _batch(lengths: list[int], vocab: int = 11, seed: int = 0):
    """Random packed targets: logits_f, logits_cf [T, V], labels, token_pos, seq_len, sample_index."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    total = int(lengths_t.sum())
    seq_len = torch.repeat_interleave(lengths_t, lengths_t)
    starts = torch.cumsum(lengths_t, 0) - lengths_t
    token_pos = torch.arange(total) - torch.repeat_interleave(starts, lengths_t) + 1
    sample_index = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
    logits_f = torch.randn(total, vocab, generator=g, dtype=torch.float64).requires_grad_()
    logits_cf = torch.randn(total, vocab, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, vocab, (total,), generator=g)
    return logits_f, logits_cf, labels, token_pos, seq_len, sample_index


def _sft(logits, labels):
    return F.cross_entropy(logits.double(), labels)


# ---------------------------------------------------------------------------------------- weights by hand
def test_linear_decay_by_hand():
    assert torch.allclose(linear_decay_weights(5, 0.25), torch.tensor([1.0, 0.8125, 0.625, 0.4375, 0.25]))
    assert linear_decay_weights(1, 0.0).tolist() == [1.0]
    assert linear_decay_weights(4, 1.0).tolist() == [1.0] * 4
    # packed form: |y| = 1 then |y| = 3 with β = 0.5
    assert torch.allclose(
        linear_decay_weights(torch.tensor([1, 3]), 0.5), torch.tensor([1.0, 1.0, 0.75, 0.5])
    )
    with pytest.raises(ValueError, match="beta_prime"):
        linear_decay_weights(3, 1.5)
    with pytest.raises(ValueError, match=">= 1"):
        linear_decay_weights(torch.tensor([2, 0]), 0.5)


def test_vectorised_decay_matches_per_length():
    lengths = [1, 2, 7, 3]
    _, _, _, pos, seq, _ = _batch(lengths)
    expected = torch.cat([linear_decay_weights(n, 0.3) for n in lengths])
    assert torch.allclose(position_decay_weights(pos, seq, 0.3), expected)
    # first token 1, last token β
    w = position_decay_weights(torch.tensor([1, 7]), torch.tensor([7, 7]), 0.3)
    assert torch.allclose(w, torch.tensor([1.0, 0.3]))


def test_beta_prime():
    assert beta_from_beta_prime(2) == 0.5
    assert math.isclose(beta_from_beta_prime(1.1), 1 - 1 / 1.1)
    assert math.isclose(beta_from_beta_prime(25), 0.96)
    assert beta_from_beta_prime(1) == 0.0
    with pytest.raises(ValueError, match=">= 1"):
        beta_from_beta_prime(0.5)


def test_ig_weights():
    ig = torch.tensor([0.0, 0.5, 0.0, 1e-3, 1e-12], dtype=torch.float64)
    assert torch.allclose(ig_weights(ig, 0.1), torch.tensor([0.1, 1.0, 0.1, 1.0, 0.1]))
    assert ig_weights(ig, 0.1).dtype == torch.float32


# ------------------------------------------------------------------------------------------- loss maths
def test_token_cross_entropy_fp32_and_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.bfloat16)
    labels = torch.tensor([0, 0])
    ce = token_cross_entropy(logits, labels)
    assert ce.dtype == torch.float32
    # CE = log 2 and -log(3/4) (bf16 rounds log 3 slightly)
    expected = -torch.log_softmax(logits.float(), -1)[torch.arange(2), labels]
    assert torch.allclose(ce, expected)
    assert math.isclose(ce[0].item(), math.log(2.0), rel_tol=1e-6)
    assert math.isclose(ce[1].item(), -math.log(0.75), rel_tol=1e-2)
    assert token_cross_entropy(logits, torch.tensor([0, -100]))[1].item() == 0.0


def test_weighted_loss_sum_by_hand():
    num, den = weighted_loss_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.5, 0.25]))
    assert num.item() == 3.0 and den.item() == 1.75


def test_causal_loss_by_hand_and_gradients_flow_through_both():
    logits_f = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    logits_cf = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    num, den = causal_loss_terms(logits_f, logits_cf, torch.tensor([0]), torch.tensor([0.5]))
    diff = torch.tensor([1.0, 0.0, 0.0])
    assert math.isclose(num.item(), 0.5 * -torch.log_softmax(diff, 0)[0].item(), rel_tol=1e-6)
    assert den.item() == 0.5
    num.backward()
    assert logits_cf.grad is not None and logits_cf.grad.abs().sum() > 0
    assert torch.allclose(logits_cf.grad, -logits_f.grad)


# ------------------------------------------------------------------------------------- SFT equivalences
@pytest.mark.parametrize("name", ["cft", "cetrec"])
def test_lambda_zero_beta_one_is_exactly_sft(name):
    logits_f, logits_cf, labels, pos, seq, _ = _batch([3, 1, 5, 2])
    obj = build_objective({"objective": name, "lambda": 0.0, "beta": 1.0})
    assert not obj.needs_counterfactual
    loss = obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf)
    assert abs(loss.item() - _sft(logits_f, labels).item()) < 1e-6
    # and with the causal pass present but λ = 0, the loss is still SFT
    obj_cf = OBJECTIVES[name](beta=1.0, lam=0.0)
    assert abs(obj_cf.loss(logits_f, labels, pos, seq).item() - _sft(logits_f, labels).item()) < 1e-6


def test_pos_beta_one_is_sft_and_weighted_otherwise():
    logits_f, _, labels, pos, seq, _ = _batch([4, 2, 6])
    sft = _sft(logits_f, labels).item()
    assert (
        abs(build_objective({"objective": "pos", "beta": 1.0}).loss(logits_f, labels, pos, seq).item() - sft)
        < 1e-6
    )
    pos_obj = build_objective({"objective": "pos", "beta": 0.25})
    w = position_decay_weights(pos, seq, 0.25).double()
    ce = F.cross_entropy(logits_f, labels, reduction="none")
    expected = (w * ce).sum() / w.sum()
    assert abs(pos_obj.loss(logits_f, labels, pos, seq).item() - expected.item()) < 1e-6
    assert abs(expected.item() - sft) > 1e-4  # the weighting changes something


def test_sft_objective_is_cross_entropy():
    logits_f, _, labels, pos, seq, _ = _batch([2, 3])
    assert (
        abs(build_objective({}).loss(logits_f, labels, pos, seq).item() - _sft(logits_f, labels).item())
        < 1e-9
    )


def test_cft_total_by_formula():
    logits_f, logits_cf, labels, pos, seq, _ = _batch([3, 4, 1])
    beta, lam = 0.25, 0.1
    w = position_decay_weights(pos, seq, beta).double()
    ce_f = F.cross_entropy(logits_f, labels, reduction="none")
    ce_c = F.cross_entropy(logits_f - logits_cf, labels, reduction="none")
    l_c = (w * ce_c).sum() / w.sum()
    for weighted, l_n in (
        (True, (w * ce_f).sum() / w.sum()),
        (False, ce_f.mean()),
    ):
        obj = build_objective(
            {"objective": "cft", "beta": beta, "lambda": lam, "cft_weight_normal_loss": weighted}
        )
        assert obj.needs_counterfactual and obj.counterfactual_kind == "drop_history"
        got = obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf)
        assert abs(got.item() - (l_n + lam * l_c).item()) < 1e-9


def test_cetrec_total_by_formula():
    logits_f, logits_cf, labels, pos, seq, _ = _batch([2, 5])
    obj = build_objective({"objective": "cetrec", "lambda": 0.5})
    assert obj.counterfactual_kind == "same_time_index" and obj.uses_temporal_embedding
    expected = F.cross_entropy(logits_f, labels) + 0.5 * F.cross_entropy(logits_f - logits_cf, labels)
    assert abs(obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf).item() - expected.item()) < 1e-9


def test_igd_weights_in_loss():
    logits_f, _, labels, pos, seq, _ = _batch([3, 2])
    token_ig = torch.tensor([0.7, 0.0, 0.0, 0.2, 0.0], dtype=torch.float64)
    obj = build_objective({"objective": "igd"})
    assert obj.beta == 0.1
    w = torch.tensor([1.0, 0.1, 0.1, 1.0, 0.1], dtype=torch.float64)
    ce = F.cross_entropy(logits_f, labels, reduction="none")
    got = obj.loss(logits_f, labels, pos, seq, token_ig=token_ig)
    assert abs(got.item() - ((w * ce).sum() / w.sum()).item()) < 1e-6
    with pytest.raises(ValueError, match="token_ig"):
        obj.loss(logits_f, labels, pos, seq)


def test_ignored_labels_get_zero_weight():
    logits_f, _, labels, pos, seq, _ = _batch([3])
    masked = labels.clone()
    masked[1] = -100
    terms = build_objective({"objective": "pos", "beta": 0.5}).combine(logits_f, masked, pos, seq)
    assert terms[NORMAL].denominator.item() == 1.0 + 0.5  # weights 1, (0.75 ignored), 0.5


# ------------------------------------------------------------------ normalisation over the effective batch
def test_effective_batch_normalisation_is_micro_batch_free():
    lengths = [3, 1, 5, 2, 4, 6]
    logits_f, logits_cf, labels, pos, seq, sample = _batch(lengths, seed=3)
    obj = build_objective({"objective": "cft", "beta": 0.25, "lambda": 0.2})
    full = obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf)
    g_full = torch.autograd.grad(full, [logits_f, logits_cf])

    # micro-batches of 2 samples: denominators summed first, then per-micro-batch backward
    micro = [sample < 2, (sample >= 2) & (sample < 4), sample >= 4]
    dens = [obj.weight_totals(pos[m], seq[m]) for m in micro]
    total_den = {k: sum(d[k] for d in dens) for k in dens[0]}
    grads = [torch.zeros_like(logits_f), torch.zeros_like(logits_cf)]
    accumulated = 0.0
    for m in micro:
        terms = obj.combine(logits_f[m], labels[m], pos[m], seq[m], logits_cf=logits_cf[m])
        part = total_loss(terms, total_den)
        accumulated += part.item()
        for acc, g in zip(grads, torch.autograd.grad(part, [logits_f, logits_cf])):
            acc += g
    assert abs(accumulated - full.item()) < 1e-9
    for a, b in zip(grads, g_full):
        assert torch.allclose(a, b, atol=1e-12)
    # the references' per-micro-batch normalisation gives a different loss
    naive = (
        sum(obj.loss(logits_f[m], labels[m], pos[m], seq[m], logits_cf=logits_cf[m]).item() for m in micro)
        / 3
    )
    assert abs(naive - full.item()) > 1e-4


def test_validation_mode_uses_normal_term_only():
    logits_f, _, labels, pos, seq, _ = _batch([3, 2])
    obj = build_objective({"objective": "cft"})
    with pytest.raises(ValueError, match="logits_cf"):
        obj.combine(logits_f, labels, pos, seq)
    terms = obj.combine(logits_f, labels, pos, seq, training=False)
    assert set(terms) == {NORMAL}
    assert set(obj.weight_totals(pos, seq, training=False)) == {NORMAL}
    assert set(obj.weight_totals(pos, seq)) == {NORMAL, CAUSAL}


# ------------------------------------------------------------------------------------- per-item tables
def test_item_token_weight_tables():
    obj = build_objective({"objective": "cft", "beta": 0.5})
    table = item_token_weights(obj, torch.tensor([0, 1, 3]))
    assert torch.allclose(table[CAUSAL], torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.75, 0.5]]))
    item_ids, pos = torch.tensor([2, 2, 2, 1]), torch.tensor([1, 2, 3, 1])
    got = gather_token_weights(table, item_ids, pos)
    assert torch.allclose(got[NORMAL], torch.tensor([1.0, 0.75, 0.5, 1.0]))

    igd = build_objective({"objective": "igd", "beta": 0.2})
    ig = torch.tensor([[0.0, 0.0], [0.3, 0.0]])
    t = item_token_weights(igd, torch.tensor([1, 2]), ig)
    assert torch.allclose(t[NORMAL], torch.tensor([[0.2, 0.0], [1.0, 0.2]]))
    # precomputed weights give the same loss as on-the-fly ones
    logits_f, logits_cf, labels, _, _, _ = _batch([3, 1])
    seq = torch.tensor([3, 3, 3, 1])
    on_the_fly = obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf)
    pre = obj.loss(logits_f, labels, pos, seq, logits_cf=logits_cf, weights=got)
    assert torch.allclose(on_the_fly, pre)


# ------------------------------------------------------------------------------------------ configuration
class _RecBoleLikeConfig:
    """Mimics recbole.config.Config: ``[]`` returns None for absent keys and ``in`` works."""

    def __init__(self, d):
        self.d = d

    def __getitem__(self, key):
        return self.d.get(key)

    def __contains__(self, key):
        return key in self.d


def test_defaults_and_flags():
    assert build_objective({}).name == "sft"
    pos = build_objective({"objective": "pos"})
    assert pos.beta == 0.25 and not pos.needs_counterfactual
    cft = build_objective(_RecBoleLikeConfig({"objective": "CFT", "beta": None}))
    assert (cft.beta, cft.lam, cft.weight_normal_loss) == (0.25, 0.1, True)
    assert cft.needs_counterfactual and cft.counterfactual_kind == "drop_history"
    assert build_objective({"objective": "cetrec"}).lam == 0.1
    assert build_objective({"objective": "igd"}).beta == 0.1
    assert build_objective({"objective": "pos", "beta": 0.3, "beta_prime": 2}).beta == 0.5
    for name in ("sft", "pos", "igd"):
        assert build_objective({"objective": name}).counterfactual_kind is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"objective": "dpo"}, "sft, pos, cft, cetrec, igd"),
        ({"objective": "pos", "beta": 1.5}, "beta_prime"),
        ({"objective": "pos", "beta": -0.1}, r"outside \[0, 1\]"),
        ({"objective": "pos", "beta": "abc"}, "must be a number"),
        ({"objective": "cft", "beta_prime": 0.5}, ">= 1"),
        ({"objective": "cft", "lambda": -1}, ">= 0"),
        ({"objective": "cft", "lambda": True}, "boolean"),
        ({"objective": "cft", "cft_weight_normal_loss": "yes"}, "true or false"),
    ],
)
def test_bad_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        build_objective(config)
