"""Issue 12's audit fixes, each checked on hand-computed numbers (each test fails on the code before it)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation
from recbole.data.interaction import Interaction

from recbole_llm.config import Config
from recbole_llm.model.llm_gen_rec import LLMGenRec
from recbole_llm.model.objectives import CAUSAL, NORMAL, build_objective, weighted_total
from recbole_llm.quick_start import create_dataset
from tests.fixtures import write_prepared


def _model(tmp_path, monkeypatch, tiny_model_path, **overrides) -> tuple[LLMGenRec, object]:
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    write_prepared(tmp_path / "data")
    config_dict = {
        "data_path": str(tmp_path / "data"),
        "llm_path": str(tiny_model_path),
        "train_sample_num": None,
        "dropout": 0.0,
        "state": "ERROR",
        "show_progress": False,
    }
    config_dict.update(overrides)
    # Through a YAML file: a config_dict / command-line "none" is parsed to None (= the objective's default).
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("".join(f"{k}: {v}\n" for k, v in config_dict.items() if isinstance(v, str)))
    config_dict = {k: v for k, v in config_dict.items() if not isinstance(v, str)}
    config = Config(
        model="LLMGenRec", dataset="tiny", config_file_list=[str(yaml_file)], config_dict=config_dict
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    return LLMGenRec(config, train.dataset), (train, valid, test)


def _inter(model: LLMGenRec, histories: list[list[int]], targets: list[int]) -> Interaction:
    width = max(len(h) for h in histories)
    seq = torch.zeros(len(histories), width, dtype=torch.long)
    for row, h in enumerate(histories):
        seq[row, : len(h)] = torch.tensor(h)
    return Interaction(
        {
            model.ITEM_SEQ: seq,
            model.ITEM_SEQ_LEN: torch.tensor([len(h) for h in histories]),
            model.POS_ITEM_ID: torch.tensor(targets),
        }
    )


# ------------------------------------------------------------------------------------------------ fix 2
def test_cetrec_without_temporal_embedding_is_refused(tmp_path, monkeypatch, tiny_model_path):
    with pytest.raises(ValueError, match="temporal_embedding=none.*constant log"):
        _model(tmp_path, monkeypatch, tiny_model_path, objective="cetrec", temporal_embedding="none")
    # without L_CT there is nothing to be constant
    model, _ = _model(
        tmp_path, monkeypatch, tiny_model_path, objective="cetrec", temporal_embedding="none", **{"lambda": 0}
    )
    assert model.temporal is None


def test_cetrec_counterfactual_differs_by_hand():
    lengths = torch.tensor([1, 2, 5])
    assert build_objective({"objective": "cetrec"}).counterfactual_differs(lengths).tolist() == [0, 1, 1]
    latest = build_objective({"objective": "cetrec", "cetrec_cf_index": "latest"})
    assert latest.counterfactual_differs(lengths).tolist() == [0, 1, 1]
    assert build_objective({"objective": "cetrec", "cetrec_cf_index": 3}).counterfactual_differs(
        lengths
    ).tolist() == [1, 1, 1]
    assert build_objective({"objective": "cft"}).counterfactual_differs(lengths).tolist() == [1, 1, 1]


def test_one_item_histories_leave_the_causal_normaliser(tmp_path, monkeypatch, tiny_model_path):
    model, _ = _model(tmp_path, monkeypatch, tiny_model_path, objective="cetrec", **{"lambda": 0.5})
    model.train()
    inter = _inter(model, [[1], [2, 3, 4]], [5, 6])
    len_1, len_2 = (len(model.prompts.target_tokens(i)) for i in (5, 6))
    dens = model.loss_denominators(inter)
    assert dens[NORMAL].item() == len_1 + len_2
    assert dens[CAUSAL].item() == len_2  # the one-item sample's tokens are not counted
    terms = model(inter)
    # by hand: L_CT = mean over the second sample's tokens of CE(logits_f − logits_cf)
    batch = model.prompts.build(model.histories(inter), [5, 6])
    with torch.no_grad():
        lf = model._target_logits(batch)
        cf = model.objective.counterfactual_inputs(model.prompts, batch, [], [])
        lc = model._target_logits(cf.batch, item_index=cf.item_index)
    second = batch.target_rows == 1
    expected_causal = F.cross_entropy((lf - lc)[second].float(), batch.target_labels[second], reduction="sum")
    assert torch.allclose(terms[CAUSAL].detach(), expected_causal, atol=1e-4)
    # the one-item sample's factual and counterfactual logits are identical (no signal to learn)
    assert torch.allclose(lf[~second], lc[~second], atol=1e-5)
    total = weighted_total(terms, dens, model.loss_coefficients)
    expected = F.cross_entropy(lf.float(), batch.target_labels) + 0.5 * expected_causal / len_2
    assert torch.allclose(total.detach(), expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------ fix 7
def test_bigrec_title_embedding_is_the_title_last_token(tmp_path, monkeypatch, tiny_model_path):
    from recbole_llm.model.grounding import embed_token_sequences

    model, _ = _model(tmp_path, monkeypatch, tiny_model_path, decoder="bigrec")
    model.eval()
    seqs = model.prompts.all_target_sequences()[1:]
    eos = model.prompts.eos_token_id
    assert all(s[-1] == eos for s in seqs)
    pad = model.prompts.pad_token_id
    expected = embed_token_sequences(model.llm, [s[:-1] for s in seqs], pad_token_id=pad)
    at_eos = embed_token_sequences(model.llm, seqs, pad_token_id=pad)
    got = model._title_embeddings()
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, at_eos, atol=1e-3)


# ------------------------------------------------------------------------------------------------ fix 1
def test_cetrec_bigrec_free_generation_uses_the_temporal_embeddings(tmp_path, monkeypatch, tiny_model_path):
    model, _ = _model(
        tmp_path,
        monkeypatch,
        tiny_model_path,
        objective="cetrec",
        decoder="bigrec",
        temporal_embedding="sinpe",
    )
    model.eval()
    seen: list[dict] = []
    generate = model.llm.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(model.llm, "generate", spy)
    history = [1, 2, 3]
    model.recommend_histories([history], 5)
    assert len(seen) == 1 and "inputs_embeds" in seen[0]
    ids = torch.tensor([model.prompts.prompt_ids(history)])
    index = torch.tensor([model.prompts.prompt_item_index(history)])
    with torch.no_grad():
        plain = model.llm.get_input_embeddings()(ids)
        expected = model._embed(ids, index)
    assert torch.equal(seen[0]["input_ids"], ids)
    assert torch.allclose(seen[0]["inputs_embeds"], expected)
    assert not torch.allclose(seen[0]["inputs_embeds"], plain)  # the history tokens carry p_k


# ------------------------------------------------------------------------------------------------ fix 3
def test_ig_calibration_over_the_catalogue_matches_the_training_target_trie():
    from recbole_llm.model.trie import TitleTrie

    # the trie module's worked example (a, b, c; EOS = 9) plus d = [5, 7, 9], never a training target
    seqs, ids, w = [[1, 2, 9], [1, 3, 9], [5, 9], [5, 7, 9]], [1, 2, 3, 4], [1.0, 1.0, 2.0, 0.0]
    full = TitleTrie.build(seqs, ids, item_weight=w)
    train = TitleTrie.build(seqs[:3], ids[:3], item_weight=w[:3])

    def norm(trie, prefix, token):
        node = trie.walk(prefix)[-1] if prefix else 0
        lo, hi = int(trie.child_ptr[node]), int(trie.child_ptr[node + 1])
        edge = lo + trie.edge_token[lo:hi].tolist().index(token)
        return float(trie.edge_ig_norm[edge])

    # by hand: root -> 1 has IG h_c, root -> 5 has 2 h_a: normalised 0 and 1, as in the training trie
    assert norm(full, [], 1) == norm(train, [], 1) == 0.0
    assert norm(full, [], 5) == norm(train, [], 5) == 1.0
    # under [5]: the unseen branch 7 has raw IG = S([5]) (> 0 = IG of 9) but gets IG~ = 0, not 1
    assert float(full.edge_ig[full.walk([5, 7])[-1] - 1]) > 0
    assert norm(full, [5], 7) == 0.0
    assert norm(full, [5], 9) == norm(train, [5], 9) == 0.0
    for seq in seqs[:3]:  # every edge of the training trie has the same IG~ in the catalogue trie
        for t in range(len(seq)):
            assert norm(full, seq[:t], seq[t]) == norm(train, seq[:t], seq[t])
