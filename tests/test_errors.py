"""Bad input: every case of issue 7 either works (odd titles, duplicates, long prompts, no pad token) or
fails with a message that names the problem and the fix, and config mistakes fail when the model and
trainer are built, never after training (no work lost)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from recbole_llm.config import Config
from recbole_llm.data.converters import RawData
from recbole_llm.data.prepare import ProtocolParams, run_protocol
from recbole_llm.data.protocol import build_samples, clean_title
from recbole_llm.model.prompt import PromptBuilder
from recbole_llm.quick_start import load_run, load_trained
from recbole_llm.utils.testing import tiny_config, tiny_tokenizer
from tests.fixtures import TITLES, write_prepared

HEADER = "item_id:token\ttitle:token\n"


@pytest.fixture
def data(tmp_path):
    write_prepared(tmp_path / "data")
    return tmp_path / "data" / "tiny"


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])


def build(data: Path, tiny_model_path: Path, **overrides):
    """Dataset, dataloaders, model and trainer exactly as a run builds them (no training)."""
    config = {
        "data_path": str(data.parent),
        "llm_path": str(tiny_model_path),
        "checkpoint_dir": str(data.parent.parent / "saved"),
        "train_batch_size": 8,
        "micro_batch_size": 4,
        "train_sample_num": None,
        "eval_sample_num": 4,
        "show_progress": False,
        "state": "ERROR",
        "mixed_precision": "no",
        **overrides,
    }
    return load_run(Config(model="LLMGenRec", dataset="tiny", config_dict=config), quiet=True)


def write_items(data: Path, titles: dict[str, str]) -> None:
    (data / "tiny.item").write_text(
        HEADER + "".join(f"{i}\t{t}\n" for i, t in titles.items()), encoding="utf-8"
    )


# ---------------------------------------------------------------------------------------------- titles
def test_missing_title_field(data, tiny_model_path):
    (data / "tiny.item").write_text("item_id:token\tname:token\n" + "".join(f"{i}\tx\n" for i in TITLES))
    with pytest.raises(ValueError, match=r"no item field `title`.*prepare tiny.*or set `title_field`"):
        build(data, tiny_model_path)


@pytest.mark.parametrize("case", ["empty title", "item without a row"])
def test_items_without_a_title(data, tiny_model_path, case):
    titles = dict(TITLES)
    if case == "empty title":
        titles["i7"] = ""
    else:
        del titles["i7"]  # i7 still appears in the interactions
    write_items(data, titles)
    with pytest.raises(
        ValueError, match=r"1 of 12 items of tiny have no `title` .*\(e\.g\. i7\).*add the missing"
    ):
        build(data, tiny_model_path)


def test_empty_catalogue(data, tiny_model_path):
    (data / "tiny.item").write_text(HEADER)
    with pytest.raises(
        ValueError, match=r"tiny\.item holds no rows.*item catalogue of tiny is empty.*prepare"
    ):
        build(data, tiny_model_path)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split(data, tiny_model_path, split):
    path = data / f"tiny.{split}.inter"
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    with pytest.raises(ValueError, match=rf"holds no rows.*the {split} split of tiny is empty.*--kcore"):
        build(data, tiny_model_path)


ODD = {
    "i1": 'Say "Anything" (1989)',
    "i2": "Amélie — Le Fabuleux Destin (2001)",
    "i3": "千と千尋の神隠し 🐉",
    "i4": "Back\\slash {title} {0} 100% <|endoftext|>",
    "i5": "It's 'quoted', \"twice\"",
}


def test_titles_with_quotes_non_ascii_and_special_tokens_round_trip(data, tiny_model_path):
    write_items(data, {**TITLES, **ODD})
    dataset, _, model, _ = build(data, tiny_model_path)
    tok, prompts = model.tokenizer, model.prompts
    item_id = {raw: int(dataset.token2id("item_id", raw)) for raw in ODD}
    for raw, title in ODD.items():
        target = prompts.target_tokens(item_id[raw])
        assert target[-1] == tok.eos_token_id and tok.eos_token_id not in target[:-1]  # literal text
        assert tok.decode(target[:-1]) == title + '"\n'
    history = [item_id["i1"], item_id["i2"], item_id["i3"], item_id["i4"]]
    text = tok.decode(prompts.prompt_ids(history))
    assert '"Say "Anything" (1989)", "Amélie — Le Fabuleux Destin (2001)", "千と千尋の神隠し 🐉", ' in text
    assert "<|endoftext|>" in text and text.endswith('### Response:\n"')
    # Each of these items can be decoded (they are leaves of the trie).
    ranked = model.recommend_histories([history], 10)[0].tolist()
    assert len(set(ranked)) == 10 and all(1 <= i < dataset.item_num for i in ranked)


def test_tabs_and_newlines_are_normalised_or_kept_consistently():
    # Preparation turns every whitespace run into one space (a TSV field cannot hold tabs/newlines) ...
    assert clean_title("Star\tWars:\n  A New\r\nHope\u00a0(1977)") == "Star Wars: A New Hope (1977)"
    # ... and titles given directly keep them, identically in prompts, targets and the trie.
    tok = tiny_tokenizer()
    titles = ["[PAD]", "Tab\tbed", "Multi\nline\ntitle", "plain"]
    builder = PromptBuilder(tok, titles)
    for item in (1, 2):
        assert tok.decode(builder.target_tokens(item)[:-1]) == titles[item] + '"\n'
    assert '"Tab\tbed", "Multi\nline\ntitle"' in tok.decode(builder.prompt_ids([1, 2]))


def test_duplicate_titles_make_every_id_a_candidate(data, tiny_model_path):
    dataset, _, model, _ = build(data, tiny_model_path, num_beams=12)
    heat = [int(dataset.token2id("item_id", raw)) for raw in ("i3", "i6")]  # both "Heat (1995)"
    assert model.trie.leaf_of_item(heat[0]) == model.trie.leaf_of_item(heat[1])
    ranked = model.recommend_histories([[1, 2], [4]], 12).tolist()
    for row in ranked:
        assert sorted(row) == list(range(1, 13))  # every item, each once
        a, b = row.index(heat[0]), row.index(heat[1])
        assert abs(a - b) == 1  # one title, both ids, next to each other


# ---------------------------------------------------------------------------------------------- samples
def test_users_with_one_interaction_are_dropped():
    inter = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "c", "a"],
            "item_id": ["x", "y", "z", "x", "y"],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    samples = build_samples(inter)
    assert set(samples["user_id"]) == {"a"} and samples["item_id"].tolist() == ["z", "y"]
    raw = RawData(inter[inter["user_id"] != "a"], {"x": "X title", "y": "Y title"})
    with pytest.raises(
        ValueError, match=r"No sample left after filtering.*loosen --kcore / --start / --min-history"
    ):
        run_protocol(raw, ProtocolParams(kcore=1))


def test_sample_with_an_empty_history(data, tiny_model_path):
    path = data / "tiny.train.inter"
    lines = path.read_text().splitlines(keepends=True)
    user, _, target, ts = lines[1].rstrip("\n").split("\t")
    path.write_text("".join([lines[0], f"{user}\t\t{target}\t{ts}\n", *lines[2:]]))
    with pytest.raises(ValueError, match=r"empty history: prepare it with --min-history 1"):
        build(data, tiny_model_path)


def test_long_prompts_drop_the_oldest_history_items_never_the_target(data, tiny_model_path):
    dataset, (train, _, _), model, _ = build(data, tiny_model_path, max_length=200)
    prompts, tok = model.prompts, model.tokenizer
    inter = train.dataset.inter_feat
    histories, targets = model.histories(inter), inter["item_id"].tolist()
    b = max(range(len(histories)), key=lambda i: len(histories[i]))  # a 6-item history
    batch = prompts.build([histories[b]], [targets[b]])
    n = int(batch.lengths[0])
    assert n <= 200 and 1 <= int(batch.history_len[0]) < len(histories[b])
    kept = histories[b][-int(batch.history_len[0]) :]  # the most recent items
    text = tok.decode(batch.input_ids[0, :n])
    assert all(model.prompts.tokenizer.decode(prompts._rest[i]).strip(', "') in text for i in kept)
    label_ids = batch.target_labels.tolist()
    assert label_ids == prompts.target_tokens(targets[b])  # the whole target, EOS included


def test_max_length_above_the_model_context_is_capped(data, tmp_path, caplog):
    tok = tiny_tokenizer()
    config = tiny_config(tok)
    config.max_position_embeddings = 200
    short = tmp_path / "short-context"
    AutoModelForCausalLM.from_config(config).save_pretrained(short)
    tok.save_pretrained(short)
    with caplog.at_level(logging.WARNING):
        _, (train, _, _), model, _ = build(data, short, max_length=512)
    assert model.prompts.max_length == 200
    assert "max_length=512 exceeds the model's context of 200 tokens" in caplog.text
    lengths = model.sample_lengths(train.dataset)
    assert lengths.max() <= 200


def test_max_length_too_small(data, tiny_model_path):
    # No prompt fits at all: the model cannot be built.
    with pytest.raises(
        ValueError, match=r"max_length=40 is too small: the fixed prompt alone takes \d+ tokens"
    ):
        build(data, tiny_model_path, max_length=40)
    # Some samples' last item + target do not fit: fit() says so before the first step.
    _, (train, valid, _), model, trainer = build(data, tiny_model_path, max_length=165)
    with pytest.raises(ValueError, match=r"max_length=165 is too small.*target item.*raise max_length"):
        trainer.fit(train, valid, saved=True)
    assert trainer.global_step == 0 and not (trainer.run_dir / "last").exists()


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "dpo"}, r"Unknown objective 'dpo': choose one of sft, pos, cft, cetrec, igd"),
        ({"decoder": "greedy"}, r"Unknown decoder 'greedy': choose one of d3, constrained, bigrec"),
        ({"objective": "pos", "beta": 1.5}, r"beta = 1\.5 is outside \[0, 1\].*beta_prime"),
        ({"objective": "igd", "beta": -0.1}, r"beta = -0\.1 is outside \[0, 1\]"),
        ({"objective": "cft", "lambda": -0.5}, r"lambda = -0\.5 must be a finite number >= 0"),
        ({"objective": "igd", "ig_alpha": 1.2}, r"ig_alpha=1\.2 is outside \[0, 1\]"),
        ({"ig_alpha": -0.2}, r"ig_alpha=-0\.2 is outside \[0, 1\]"),
        ({"num_beams": 5}, r"num_beams=5 is smaller than the largest K in topk \(10\).*num_beams >= 10"),
        ({"tuning": "qlora"}, r"tuning='qlora' is not supported: use 'full' or 'lora'"),
        ({"fill": "random"}, r"fill='random': use 'none' or 'popularity'"),
        ({"valid_metric": "NDCG@20"}, r"valid_metric='NDCG@20' is neither 'loss' nor one of.*ndcg@10"),
        ({"decoder": "bigrec", "bigrec_rank": "l1"}, r"bigrec_rank='l1': choose one of bigrec, cft"),
        ({"decoder": "bigrec", "bigrec_generations": 0}, r"bigrec_generations=0 must be >= 1"),
        ({"decoder": "bigrec", "ensemble_weight": 5.0}, r"ensemble_weight=5\.0 must be in \[0, 1\]"),
        ({"ensemble_weight": 1.5}, r"ensemble_weight=1\.5 must be in \[0, 1\]"),
        ({"ensemble_weight": 0.5}, r"ensemble_weight < 1 needs ensemble_checkpoint.*SASRec"),
        (
            {"ensemble_weight": 0.5, "ensemble_checkpoint": "nowhere/SASRec.pth"},
            r"nowhere/SASRec\.pth does not exist: check the path or train the model first",
        ),
    ],
)
def test_config_mistakes_fail_when_the_run_is_built(data, tiny_model_path, overrides, message):
    """Raised by load_run (model + trainer construction): before any training step."""
    with (
        pytest.raises(ValueError, match=message)
        if "does not exist" not in message
        else pytest.raises(FileNotFoundError, match=message)
    ):
        build(data, tiny_model_path, **overrides)


def test_model_folder_that_does_not_exist(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder .*nope does not exist\. Valid llm_path values"):
        build(data, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json.*Valid llm_path values"):
        build(data, tmp_path / "empty")


def test_tokenizer_without_pad_token_falls_back_to_eos(data, tmp_path, tiny_model_path, caplog):
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_path, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "special_tokens_map.json").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        _, (train, _, _), model, _ = build(data, folder)
    assert "has no pad token: using its EOS token" in caplog.text
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id == model.prompts.pad_token_id
    batch = next(iter(train))
    model.train()
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and loss > 0
    assert len(set(model.recommend_histories([[1, 2, 3]], 10)[0].tolist())) == 10


# ---------------------------------------------------------------------------------------------- checkpoints
def test_corrupt_and_mismatched_checkpoints(data, tiny_model_path, tmp_path, monkeypatch):
    _, _, model, _ = build(data, tiny_model_path)
    run = tmp_path / "run"
    model.save_checkpoint(run / "best")
    overrides = {
        "data_path": str(data.parent),
        "llm_path": str(tiny_model_path),
        "state": "ERROR",
        "eval_sample_num": 4,
        "mixed_precision": "no",
    }
    (run / "run.json").write_text(
        json.dumps({"model": "LLMGenRec", "dataset": "tiny", "overrides": overrides})
    )
    assert load_trained(run).model.n_items == 13  # the folder is a valid run
    # A different setting than the run's: the error names the key that differs.
    with pytest.raises(
        ValueError, match=r"does not match the model.*tuning: checkpoint \"full\" vs now \"lora\""
    ):
        load_trained(run, config_dict={"tuning": "lora"})
    # A truncated weights file: named, with the fix.
    file = run / "best" / "trainable.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"best/trainable\.safetensors is corrupt .*delete it and rerun"):
        load_trained(run)
    shutil.rmtree(run / "best")
    with pytest.raises(
        FileNotFoundError, match=r"No checkpoint at .*best.*pass a run's `best` or `last` folder"
    ):
        model.load_checkpoint(run / "best")
    with pytest.raises(FileNotFoundError, match=r"holds no run\.json: pass a results JSON or a run folder"):
        load_trained(tmp_path)
