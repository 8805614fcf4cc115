"""Token-weighted objectives: weights by hand, SFT equivalences, causal loss, effective-batch normalisation,
the registry and a new objective added by one class (the README's *Extending* example)."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.model.llm_gen_rec import LLMGenRec
from recbole_llm.model.objectives import (
    CAUSAL,
    NORMAL,
    OBJECTIVES,
    Counterfactual,
    Objective,
    beta_from_beta_prime,
    build_objective,
    causal_loss_terms,
    gather_token_weights,
    ig_weights,
    item_token_weights,
    position_decay_weights,
    token_cross_entropy,
    weighted_loss_sum,
    weighted_total,
)
from recbole_llm.quick_start import create_dataset
from tests.fixtures import write_prepared


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


def _denominators(obj, pos, seq, token_ig=None, weights=None, training=True):
    """``Σ w`` of every active term: what the model reads from its per-item tables before the forward pass."""
    w = weights if weights is not None else obj.token_weights(pos, seq, token_ig)
    return {name: w[name].sum() for name in obj.active_terms(training)}


def _loss(obj, logits_f, labels, pos, seq, *, token_ig=None, weights=None, **kwargs):
    """The loss of one batch normalised over that batch: numerators over its own weight totals."""
    nums = obj.combine(logits_f, labels, pos, seq, token_ig=token_ig, weights=weights, **kwargs)
    dens = _denominators(obj, pos, seq, token_ig, weights, kwargs.get("training", True))
    return weighted_total(nums, dens, obj.coefficients)


# ---------------------------------------------------------------------------------------- weights by hand
def test_position_decay_by_hand():
    five = torch.full((5,), 5)
    assert torch.allclose(
        position_decay_weights(torch.arange(1, 6), five, 0.25),
        torch.tensor([1.0, 0.8125, 0.625, 0.4375, 0.25]),
    )
    assert position_decay_weights(torch.tensor([1]), torch.tensor([1]), 0.0).tolist() == [1.0]
    assert position_decay_weights(torch.arange(1, 5), torch.full((4,), 4), 1.0).tolist() == [1.0] * 4
    # packed form: |y| = 1 then |y| = 3 with β = 0.5
    assert torch.allclose(
        position_decay_weights(torch.tensor([1, 1, 2, 3]), torch.tensor([1, 3, 3, 3]), 0.5),
        torch.tensor([1.0, 1.0, 0.75, 0.5]),
    )
    with pytest.raises(ValueError, match="beta_prime"):
        OBJECTIVES["pos"](beta=1.5)


def test_vectorised_decay_matches_per_length():
    lengths = [1, 2, 7, 3]
    _, _, _, pos, seq, _ = _batch(lengths)
    expected = torch.tensor([1 - 0.7 * (t - 1) / max(n - 1, 1) for n in lengths for t in range(1, n + 1)])
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
    loss = _loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf)
    assert abs(loss.item() - _sft(logits_f, labels).item()) < 1e-6
    # and with the causal pass present but λ = 0, the loss is still SFT
    obj_cf = OBJECTIVES[name](lam=0.0, **({"beta": 1.0} if name == "cft" else {}))
    assert abs(_loss(obj_cf, logits_f, labels, pos, seq).item() - _sft(logits_f, labels).item()) < 1e-6


def test_pos_beta_one_is_sft_and_weighted_otherwise():
    logits_f, _, labels, pos, seq, _ = _batch([4, 2, 6])
    sft = _sft(logits_f, labels).item()
    assert (
        abs(
            _loss(build_objective({"objective": "pos", "beta": 1.0}), logits_f, labels, pos, seq).item() - sft
        )
        < 1e-6
    )
    pos_obj = build_objective({"objective": "pos", "beta": 0.25})
    w = position_decay_weights(pos, seq, 0.25).double()
    ce = F.cross_entropy(logits_f, labels, reduction="none")
    expected = (w * ce).sum() / w.sum()
    assert abs(_loss(pos_obj, logits_f, labels, pos, seq).item() - expected.item()) < 1e-6
    assert abs(expected.item() - sft) > 1e-4  # the weighting changes something


def test_sft_objective_is_cross_entropy():
    logits_f, _, labels, pos, seq, _ = _batch([2, 3])
    assert (
        abs(_loss(build_objective({}), logits_f, labels, pos, seq).item() - _sft(logits_f, labels).item())
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
        assert obj.needs_counterfactual
        got = _loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf)
        assert abs(got.item() - (l_n + lam * l_c).item()) < 1e-9


def test_cetrec_total_by_formula():
    logits_f, logits_cf, labels, pos, seq, _ = _batch([2, 5])
    obj = build_objective({"objective": "cetrec", "lambda": 0.5})
    assert obj.needs_counterfactual and obj.temporal_embedding == "rope"
    expected = F.cross_entropy(logits_f, labels) + 0.5 * F.cross_entropy(logits_f - logits_cf, labels)
    assert abs(_loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf).item() - expected.item()) < 1e-9


def test_igd_weights_in_loss():
    logits_f, _, labels, pos, seq, _ = _batch([3, 2])
    token_ig = torch.tensor([0.7, 0.0, 0.0, 0.2, 0.0], dtype=torch.float64)
    obj = build_objective({"objective": "igd"})
    assert obj.beta == 0.1
    w = torch.tensor([1.0, 0.1, 0.1, 1.0, 0.1], dtype=torch.float64)
    ce = F.cross_entropy(logits_f, labels, reduction="none")
    got = _loss(obj, logits_f, labels, pos, seq, token_ig=token_ig)
    assert abs(got.item() - ((w * ce).sum() / w.sum()).item()) < 1e-6
    with pytest.raises(ValueError, match="token_ig"):
        _loss(obj, logits_f, labels, pos, seq)


def test_ignored_labels_get_zero_weight():
    logits_f, _, labels, pos, seq, _ = _batch([3])
    masked = labels.clone()
    masked[1] = -100
    terms = build_objective({"objective": "pos", "beta": 0.5}).combine(logits_f, masked, pos, seq)
    ce = F.cross_entropy(logits_f, labels, reduction="none")
    # weights 1, (0.75 ignored), 0.5
    assert math.isclose(terms[NORMAL].item(), (1.0 * ce[0] + 0.5 * ce[2]).item(), rel_tol=1e-12)


# ------------------------------------------------------------------ normalisation over the effective batch
def test_effective_batch_normalisation_is_micro_batch_free():
    lengths = [3, 1, 5, 2, 4, 6]
    logits_f, logits_cf, labels, pos, seq, sample = _batch(lengths, seed=3)
    obj = build_objective({"objective": "cft", "beta": 0.25, "lambda": 0.2})
    full = _loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf)
    g_full = torch.autograd.grad(full, [logits_f, logits_cf])

    # micro-batches of 2 samples: denominators summed first, then per-micro-batch backward
    micro = [sample < 2, (sample >= 2) & (sample < 4), sample >= 4]
    dens = [_denominators(obj, pos[m], seq[m]) for m in micro]
    total_den = {k: sum(d[k] for d in dens) for k in dens[0]}
    grads = [torch.zeros_like(logits_f), torch.zeros_like(logits_cf)]
    accumulated = 0.0
    for m in micro:
        terms = obj.combine(logits_f[m], labels[m], pos[m], seq[m], logits_cf=logits_cf[m])
        part = weighted_total(terms, total_den, obj.coefficients)
        accumulated += part.item()
        for acc, g in zip(grads, torch.autograd.grad(part, [logits_f, logits_cf])):
            acc += g
    assert abs(accumulated - full.item()) < 1e-9
    for a, b in zip(grads, g_full):
        assert torch.allclose(a, b, atol=1e-12)
    # the references' per-micro-batch normalisation gives a different loss
    naive = (
        sum(_loss(obj, logits_f[m], labels[m], pos[m], seq[m], logits_cf=logits_cf[m]).item() for m in micro)
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
    assert obj.active_terms(training=False) == (NORMAL,)
    assert set(obj.active_terms(training=True)) == {NORMAL, CAUSAL}
    assert set(obj.token_weights(pos, seq)) == {NORMAL, CAUSAL}


def test_cft_validation_loss_is_plain_cross_entropy():
    """The CFT reference stops early on unweighted CE; the decayed training weights must not leak in."""
    logits_f, _, labels, pos, seq, _ = _batch([3, 4, 1])
    obj = build_objective({"objective": "cft", "beta": 0.25, "cft_weight_normal_loss": True})
    got = _loss(obj, logits_f, labels, pos, seq, training=False, weights=obj.validation_weights(pos, seq))
    assert abs(got.item() - F.cross_entropy(logits_f, labels).item()) < 1e-9
    nums = obj.combine(logits_f, labels, pos, seq, training=False)
    assert abs(nums[NORMAL].item() - F.cross_entropy(logits_f, labels, reduction="sum").item()) < 1e-9
    table = item_token_weights(obj, torch.tensor([0, 3]), validation=True)
    assert set(table) == {NORMAL} and torch.equal(
        table[NORMAL], torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    )
    # pos keeps its weighted validation loss (its paper's reading is unchanged)
    pos_obj = build_objective({"objective": "pos", "beta": 0.5})
    assert torch.equal(pos_obj.validation_weights(pos, seq)[NORMAL], pos_obj.token_weights(pos, seq)[NORMAL])


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
    on_the_fly = _loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf)
    pre = _loss(obj, logits_f, labels, pos, seq, logits_cf=logits_cf, weights=got)
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
    assert cft.needs_counterfactual and cft.temporal_embedding is None
    assert build_objective({"objective": "cetrec"}).lam == 0.1
    assert build_objective({"objective": "igd"}).beta == 0.1
    assert build_objective({"objective": "igd"}).decoding_defaults == {"ig_alpha": 0.2}
    assert build_objective({"objective": "pos", "beta": 0.3, "beta_prime": 2}).beta == 0.5
    for name in ("sft", "pos", "igd"):
        obj = build_objective({"objective": name})
        assert not obj.needs_counterfactual and obj.temporal_embedding is None
        with pytest.raises(ValueError, match="no counterfactual pass"):
            obj.counterfactual_inputs(_Prompts(), SimpleNamespace(), [[1]], [2])
    # each objective reads only its own keys
    assert build_objective({"objective": "sft", "beta": "abc", "lambda": -1}).hparams() == {
        "objective": "sft"
    }
    assert build_objective({"objective": "pos", "lambda": -1}).hparams() == {"objective": "pos", "beta": 0.25}


class _Prompts:
    """Records how an objective asks the prompt builder for its counterfactual batch."""

    def build(self, histories, targets, counterfactual=None):
        return ("built", histories, targets, counterfactual)


def test_counterfactual_inputs():
    cft = build_objective({"objective": "cft"})
    factual = SimpleNamespace()
    # CFT §3.2.1: the prompt without the history
    assert cft.counterfactual_inputs(_Prompts(), factual, [[1, 2]], [3]) == Counterfactual(
        ("built", [[1, 2]], [3], True), None
    )
    # CETRec §4.3: the same tokens, every history item at one temporal index
    batch = SimpleNamespace(
        item_index=torch.tensor([[-1, 2, 1, 0, -1], [0, -1, -1, -1, -1]]), history_len=torch.tensor([3, 1])
    )
    for config, value in (
        ({}, [[-1, 2, 2, 2, -1], [0, -1, -1, -1, -1]]),
        ({"cetrec_cf_index": "Latest"}, [[-1, 0, 0, 0, -1], [0, -1, -1, -1, -1]]),
    ):
        cf = build_objective({"objective": "cetrec", **config}).counterfactual_inputs(
            _Prompts(), batch, [], []
        )
        assert cf.batch is batch and cf.item_index.tolist() == value


def test_cetrec_cf_index_is_parsed_and_recorded():
    assert build_objective({"objective": "cetrec"}).hparams()["cetrec_cf_index"] == "earliest"
    assert build_objective({"objective": "cetrec", "cetrec_cf_index": "3"}).cf_index == 3
    assert build_objective({"objective": "cetrec", "cetrec_cf_index": "Latest"}).hparams() == {
        "objective": "cetrec",
        "lambda": 0.1,
        "cetrec_cf_index": "latest",
    }
    with pytest.raises(ValueError, match="cetrec_cf_index"):
        build_objective({"objective": "cetrec", "cetrec_cf_index": "oldest"})
    # another objective does not read the key
    assert build_objective({"objective": "cft", "cetrec_cf_index": "oldest"}).name == "cft"


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


# ------------------------------------------------------------------------------ a new objective: one class
@pytest.fixture
def first_token_objective():
    """A new objective is one class (README, *Extending*); the fixture unregisters it afterwards."""

    class FirstTokenObjective(Objective):
        """Train on the first title token of each target only."""

        name = "first_token"

        def token_weights(self, token_pos, seq_len, token_ig=None):
            return {NORMAL: (token_pos == 1).float()}

    yield FirstTokenObjective
    del OBJECTIVES[FirstTokenObjective.name]  # leave the registry as the package defines it


def test_a_new_objective_registers_builds_and_trains(
    first_token_objective, tmp_path, monkeypatch, tiny_model_path
):
    assert list(OBJECTIVES) == ["sft", "pos", "cft", "cetrec", "igd", "first_token"]
    with pytest.raises(ValueError, match="choose one of sft, pos, cft, cetrec, igd, first_token"):
        build_objective({"objective": "dpo"})
    objective = build_objective({"objective": "First_Token"})
    assert type(objective) is first_token_objective and objective.hparams() == {"objective": "first_token"}
    with pytest.raises(ValueError, match="already taken"):
        type("Other", (Objective,), {"name": "first_token"})

    # One training step of a tiny LLMGenRec configured with it.
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    write_prepared(tmp_path / "data")
    config = Config(
        model="LLMGenRec",
        dataset="tiny",
        config_dict={
            "data_path": str(tmp_path / "data"),
            "llm_path": str(tiny_model_path),
            "objective": "first_token",
            "train_sample_num": None,
            "dropout": 0.0,
            "state": "ERROR",
            "show_progress": False,
        },
    )
    train, _, _ = data_preparation(config, create_dataset(config))
    model = LLMGenRec(config, train.dataset).train()
    assert type(model.objective) is first_token_objective
    inter = train.dataset.inter_feat[:4]
    dens = model.loss_denominators(inter)
    assert dens == {NORMAL: 4.0}  # one weighted token per sample, known before the forward pass
    loss = weighted_total(model(inter), dens, model.loss_coefficients)
    # ... and the loss is the mean cross-entropy of every sample's first target token
    batch = model.prompts.build(model.histories(inter), inter[model.POS_ITEM_ID].tolist())
    first = batch.target_t == 1
    expected = F.cross_entropy(model._target_logits(batch)[first].float(), batch.target_labels[first])
    assert torch.allclose(loss, expected, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
