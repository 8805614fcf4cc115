"""LLMGenRec end to end on a tiny random model: every objective and decoder, reload, recommend."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from recbole_llm.quick_start import load_trained, run_recbole_llm
from recbole_llm.recommend import Recommender
from tests.fixtures import TITLES


def _run(workspace, monkeypatch, **overrides):
    root, model_dir = workspace
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    config = {
        "data_path": str(root / "data"),
        "llm_path": str(model_dir),
        "checkpoint_dir": str(root / "saved"),
        "results_dir": str(root / "results"),
        "epochs": 1,
        "train_batch_size": 16,
        "micro_batch_size": 8,
        "train_sample_num": None,
        "eval_sample_num": 6,
        "show_progress": False,
        "state": "ERROR",
        "mixed_precision": "no",
    }
    config.update(overrides)
    return run_recbole_llm(model="LLMGenRec", dataset="tiny", config_dict=config)


@pytest.mark.parametrize(
    ("objective", "extra", "resolved"),
    [
        ("sft", {}, {"ig_alpha": 0.0, "temporal_embedding": "none"}),
        ("pos", {"beta": 0.5}, {"beta": 0.5}),
        ("cft", {"lambda": 0.2}, {"lambda": 0.2, "beta": 0.25, "cft_weight_normal_loss": True}),
        ("cetrec", {}, {"lambda": 0.1, "temporal_embedding": "rope", "cetrec_cf_index": "earliest"}),
        ("igd", {"ig_alpha": 0.3}, {"beta": 0.1, "ig_alpha": 0.3, "length_penalty": 0.0}),
    ],
)
def test_every_objective_runs_and_is_recorded(workspace, monkeypatch, objective, extra, resolved):
    result = _run(workspace, monkeypatch, objective=objective, **extra)
    saved = json.loads(Path(result["results_file"]).read_text())
    assert saved["objective"] == objective and saved["run"].startswith(f"LLMGenRec-{objective}-d3")
    for key, value in extra.items():
        assert saved["config"][key] == value
    # The values really used, paper defaults resolved (the config keeps `~` for what was not set).
    assert (
        saved["hyper_parameters"]["objective"] == objective and saved["hyper_parameters"]["decoder"] == "d3"
    )
    for key, value in resolved.items():
        assert saved["hyper_parameters"][key] == value, key
    assert set(saved["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert 0.0 <= saved["test_result"]["hit@10"] <= 1.0


@pytest.mark.parametrize("decoder", ["constrained", "bigrec"])
def test_other_decoders_run(workspace, monkeypatch, decoder):
    result = _run(workspace, monkeypatch, decoder=decoder)
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}


def test_train_save_load_evaluate_round_trip_gives_identical_metrics(workspace, monkeypatch):
    result = _run(workspace, monkeypatch, objective="igd")
    monkeypatch.setattr(sys, "argv", ["x"])
    trained = load_trained(result["results_file"])
    from recbole_llm.trainer import LLMTrainer

    trainer = LLMTrainer(trained.config, trained.model)
    again = trainer.evaluate(trained.test_data, load_best_model=False)
    assert dict(again) == dict(result["test_result"])


def test_evaluate_re_decodes_a_finished_run_without_training(workspace, monkeypatch):
    import runpy

    from recbole_llm.trainer import LLMTrainer

    result = _run(workspace, monkeypatch, objective="igd")
    # Same settings: the same metrics as the run itself (nothing retrained, nothing re-initialised).
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    same = run_recbole_llm(config_dict={"evaluate": result["results_file"]})
    assert (
        same["test_result"] == result["test_result"]
        and same["test_fingerprint"] == result["test_fingerprint"]
    )
    # From the command line with another decoder and α = 0: equal to decoding the reloaded run that way.
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "run_recbole_llm.py",
            f"--evaluate={result['results_file']}",
            "--decoder=constrained",
            "--ig_alpha=0",
        ],
    )
    runpy.run_path(str(Path(__file__).parents[1] / "run_recbole_llm.py"), run_name="__main__")
    files = sorted(Path(result["results_file"]).parent.glob("LLMGenRec-igd-constrained-*.json"))
    saved = json.loads(files[-1].read_text())
    assert saved["evaluated_from"] == result["results_file"] and saved["config"]["ig_alpha"] == 0
    assert saved["checkpoint"] == result["checkpoint"] and saved["train_seconds"] == result["train_seconds"]
    monkeypatch.setattr(sys, "argv", ["x"])
    trained = load_trained(result["results_file"], {"decoder": "constrained", "ig_alpha": 0})
    expected = LLMTrainer(trained.config, trained.model).evaluate(trained.test_data, load_best_model=False)
    assert saved["test_result"] == dict(expected)
    # Keys that would describe another model are refused, naming the key and the trained value.
    with pytest.raises(ValueError, match=r"objective.*trained with objective='igd'"):
        run_recbole_llm(config_dict={"evaluate": result["results_file"], "objective": "sft"})
    with pytest.raises(ValueError, match="trained with model=LLMGenRec"):
        run_recbole_llm(model="SASRec", config_dict={"evaluate": result["results_file"]})


def test_lora_tuning_trains_only_adapters(workspace, monkeypatch):
    result = _run(workspace, monkeypatch, tuning="lora")
    checkpoint = Path(result["checkpoint"]) / "trainable.safetensors"
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in n for n in names)


def test_recommend_from_a_saved_run_by_titles(workspace, monkeypatch):
    result = _run(workspace, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["x"])
    rec = Recommender.load(result["results_file"])
    out = rec.recommend(["The Matrix (1999)", "Toy Story (1995)"], k=5)
    assert len(out) == 5 and [r["rank"] for r in out] == [1, 2, 3, 4, 5]
    assert all(r["title"] in TITLES.values() for r in out)
    assert len({r["item_id"] for r in out}) == 5
    with pytest.raises(KeyError, match="Did you mean"):
        rec.recommend(["The Matrix (1998)"])
    with pytest.raises(ValueError, match="empty"):
        rec.recommend([])


def test_full_sort_predict_reads_only_the_history(workspace, monkeypatch):
    result = _run(workspace, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["x"])
    trained = load_trained(result["results_file"])
    batch = next(iter(trained.test_data))[0]
    scores = trained.model.full_sort_predict(batch)
    batch.interaction["item_id"] = torch.zeros_like(batch["item_id"])  # the target must not matter
    assert torch.equal(scores, trained.model.full_sort_predict(batch))
    assert scores.shape == (len(batch), trained.model.n_items)
    # every real item has a finite score: outside the beam list in training-popularity order
    assert torch.isfinite(scores[:, 1:]).all() and torch.isinf(scores[:, 0]).all()
    rest = scores[0, 1:] < 0
    outside = (torch.nonzero(rest).squeeze(1) + 1).tolist()
    ordered = sorted(outside, key=lambda i: -scores[0, i].item())
    assert ordered == [i for i in trained.model._fill_order.tolist() if i in set(outside)]


def test_epoch_log_names_the_loss_terms_and_their_total():
    from types import SimpleNamespace

    from recbole_llm.trainer import LLMTrainer

    fake = SimpleNamespace(
        unwrapped=SimpleNamespace(
            objective=SimpleNamespace(term_names=("normal", "causal")),
            loss_coefficients={"normal": 1.0, "causal": 0.1},
        ),
        config={"loss_decimal_place": 4},
    )
    line = LLMTrainer._generate_train_loss_output(fake, 0, 10.0, 12.5, (4.0, 2.0))  # sorted: causal, normal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert (
        plain
        == "epoch 0 training [time: 2.50s, train loss: 2.4000 = causal (×0.1): 4.0000, normal (×1): 2.0000]"
    )


def test_d3_ensemble_with_a_sasrec_run_end_to_end(workspace, monkeypatch):
    """A real SASRec checkpoint (non-default size) guides decoding, in training runs and in --evaluate,
    and never becomes part of the LLM: not optimised, not in the LLM checkpoint."""
    from safetensors import safe_open

    root, _ = workspace
    monkeypatch.setattr(sys, "argv", ["x", "--state=ERROR", "--show_progress=False"])
    sasrec = run_recbole_llm(
        model="SASRec",
        dataset="tiny",
        config_dict={
            "data_path": str(root / "data"),
            "checkpoint_dir": str(root / "saved"),
            "results_dir": str(root / "results"),
            "epochs": 1,
            "hidden_size": 16,
            "inner_size": 32,
            "eval_sample_num": 6,
        },
    )
    guided = _run(workspace, monkeypatch, ensemble_checkpoint=sasrec["checkpoint"], ensemble_weight=0.5)
    with safe_open(str(Path(guided["checkpoint"]) / "trainable.safetensors"), "pt") as f:
        names = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert names and not [n for n in names if "ensemble" in n]
    plain = _run(workspace, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["x"])
    # The same decoding applied afterwards to an unguided run, and the guided run decoded alone.
    again = run_recbole_llm(
        config_dict={
            "evaluate": plain["results_file"],
            "ensemble_checkpoint": sasrec["checkpoint"],
            "ensemble_weight": 0.5,
        }
    )
    assert again["hyper_parameters"]["ensemble_weight"] == 0.5
    alone = run_recbole_llm(config_dict={"evaluate": guided["results_file"], "ensemble_weight": 1.0})
    assert alone["hyper_parameters"]["ensemble_weight"] == 1.0
    assert again["test_fingerprint"] == alone["test_fingerprint"] == guided["test_fingerprint"]


def test_zero_shot_trains_nothing_and_is_a_full_run(workspace, monkeypatch):
    """``zero_shot``: the best checkpoint holds the LLM exactly as loaded, no epoch ran, and the run is tested
    and named like any other (issue 15's zero-shot row)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    result = _run(workspace, monkeypatch, zero_shot=True, learning_rate=0.5)
    results_file = Path(result["results_file"])
    assert results_file.name.startswith("LLMGenRec-sft-d3-zeroshot-")
    saved = json.loads(results_file.read_text())
    assert set(saved["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    weights = load_file(str(Path(saved["checkpoint"]) / "trainable.safetensors"))
    original = AutoModelForCausalLM.from_pretrained(workspace[1]).state_dict()
    changed = [k for k, v in weights.items() if not torch.equal(v, original[k.removeprefix("llm.")])]
    assert not changed  # a learning rate of 0.5 would have moved every weight in one step
    run_info = json.loads((Path(saved["checkpoint"]).parent / "run.json").read_text())
    assert run_info  # the run folder reloads like a trained run's
