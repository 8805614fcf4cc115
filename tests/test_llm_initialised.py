"""CFT's SASRec* / GRU4Rec* (``SASRecLLM``, ``GRU4RecLLM``, CFT §4.1.3): RecBole's models whose item table
starts from the LLM's title encodings (BIGRec grounding's), projected when the sizes differ, cached."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recbole_llm.config import Config
from recbole_llm.model import llm_initialised
from recbole_llm.model.grounding import last_token_hidden
from recbole_llm.model.llm_initialised import LLMItemEmbedding
from recbole_llm.quick_start import load_run, run_recbole_llm
from recbole_llm.utils.errors import UserError
from tests.fixtures import TITLES


def _config(model, root, model_dir, **extra):
    return Config(
        model=model,
        dataset="tiny",
        config_dict={
            "data_path": str(root / "data"),
            "checkpoint_dir": str(root / "saved"),
            "llm_path": str(model_dir),
            "state": "ERROR",
            "show_progress": False,
            **extra,
        },
    )


def _build(model, root, model_dir, **extra):
    config = _config(model, root, model_dir, **extra)
    dataset, _, built, _ = load_run(config, quiet=True, with_trainer=False)
    return built, dataset


def _by_hand(model_dir, titles):
    """Last-layer hidden state at the last token of ``Title"`` + newline (the D3 target piece), one title at a time."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = []
    for title in titles:
        ids = torch.tensor([tokenizer(f'{title}"\n', add_special_tokens=False).input_ids])
        rows.append(last_token_hidden(llm, ids, torch.ones_like(ids))[0])
    return torch.stack(rows)


def test_equal_sizes_the_item_table_is_the_llm_encoding_of_each_title(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    model, dataset = _build("SASRecLLM", root, model_dir, hidden_size=32)  # the tiny LLM's hidden size
    emb = model.item_embedding
    assert isinstance(emb, LLMItemEmbedding) and emb.projection is None
    titles = dataset.item_titles("title")
    picked = [1, 4, len(titles) - 1]
    expected = _by_hand(model_dir, [titles[i] for i in picked])
    assert torch.allclose(emb.weight[picked], expected, atol=1e-5)
    assert emb.weight[0].abs().sum() == 0  # padding row
    assert set(titles[1:]) == set(TITLES.values())
    # The same table LLMGenRec grounds BIGRec generations to.
    gen, _ = _build("LLMGenRec", root, model_dir)
    gen.eval()
    assert torch.allclose(emb.weight[1:], gen._title_embeddings(), atol=1e-5)
    ids = torch.tensor([[0, 1, 4]])
    assert torch.equal(emb(ids)[0], emb.weight[[0, 1, 4]])


def test_other_sizes_a_learned_projection_keeps_the_padding_row_zero(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    model, _ = _build("GRU4RecLLM", root, model_dir)  # embedding_size 64, LLM hidden 32
    emb = model.item_embedding
    assert emb.projection is not None and emb.projection.weight.shape == (64, 32)
    assert emb.weight.shape == (emb.table.shape[0], 64) == (model.n_items, 64)
    assert torch.allclose(emb.weight, emb.table @ emb.projection.weight.T * emb.keep)
    emb.table.data[0] = 1.0  # even a non-zero stored row 0 gives a zero padding embedding, no gradient
    emb.weight.sum().backward()
    assert emb.weight[0].abs().sum() == 0 and emb.table.grad[0].abs().sum() == 0
    assert emb.table.grad[1:].abs().sum() > 0  # trainable by default (llm_init_trainable: True)
    frozen, _ = _build("GRU4RecLLM", root, model_dir, llm_init_trainable=False)
    assert not frozen.item_embedding.table.requires_grad
    assert frozen.item_embedding.projection.weight.requires_grad
    with pytest.raises(UserError, match="llm_init_trainable='yes' must be True"):
        _config("GRU4RecLLM", root, model_dir, llm_init_trainable="yes")


def test_the_table_is_cached_and_a_second_build_does_not_call_the_llm(tmp_path, workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    (tmp_path / "data").symlink_to(root / "data")
    first, _ = _build("SASRecLLM", tmp_path, model_dir)
    files = list((tmp_path / "saved" / "llm_item_tables").glob("tiny-*.pt"))
    assert len(files) == 1

    def no_llm(*args, **kwargs):
        raise AssertionError("the cached table must be read, not encoded again")

    monkeypatch.setattr(llm_initialised, "encode_titles", no_llm)
    second, _ = _build("GRU4RecLLM", tmp_path, model_dir)  # another model, the same titles and LLM
    assert torch.equal(second.item_embedding.table, first.item_embedding.table)
    assert llm_initialised._cache_file(
        {"checkpoint_dir": "s", "dataset": "d"}, ["", "A"], str(model_dir)
    ) != (
        llm_initialised._cache_file({"checkpoint_dir": "s", "dataset": "d"}, ["", "B"], str(model_dir))
    )  # other titles, another table


def test_the_models_keep_their_baselines_settings(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    for base, keys in {
        "SASRec": ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob"),
        "GRU4Rec": ("embedding_size", "hidden_size", "num_layers", "dropout_prob", "loss_type"),
    }.items():
        plain = Config(model=base, dataset="tiny", config_dict={"data_path": str(root / "data")})
        llm = _config(f"{base}LLM", root, model_dir)
        assert {k: llm[k] for k in keys} == {k: plain[k] for k in keys}
        final = llm.final_config_dict
        different = {k for k, v in plain.final_config_dict.items() if k not in final or final[k] != v}
        assert different <= {"model", "llm_path", "checkpoint_dir", "state", "show_progress"}, different


def test_a_tiny_run_through_the_quick_start_writes_results(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    result = run_recbole_llm(
        model="SASRecLLM",
        dataset="tiny",
        config_dict={
            "data_path": str(root / "data"),
            "checkpoint_dir": str(root / "saved"),
            "results_dir": str(root / "results"),
            "llm_path": str(model_dir),
            "epochs": 1,
            "state": "ERROR",
            "show_progress": False,
        },
    )
    written = json.loads(Path(result["results_file"]).read_text())
    assert written["model"] == "SASRecLLM"
    assert set(written["test_result"]) >= {"hit@10", "ndcg@10"}
    assert written["test_fingerprint"]
