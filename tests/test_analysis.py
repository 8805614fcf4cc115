"""Analyses: popularity groups, reversed histories, IG statistics; numbers by hand (tables: test_reporting)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_llm.analysis.common import Run, rank_items
from recbole_llm.analysis.ig_stats import (
    entropy_by_step,
    item_path_entropies,
    run_ig_loss,
    zero_ig_statistics,
)
from recbole_llm.analysis.popularity import group_shares, popularity_groups
from recbole_llm.analysis.temporal import change_rate, list_change_rates, reverse_histories
from recbole_llm.trainer.ig_loss import IGLossTracker
from run_recbole_llm import log_same_split_report
from tests.fixtures import TITLES, write_prepared
from tests.oracles import ReferenceTrie, path_entropies

# ----------------------------------------------------------------------------- popularity


def test_popularity_groups_by_items_and_by_interactions():
    counts = [0, 5, 1, 3, 0, 9, 2]  # index 0 = padding
    # ascending (ties by id): 4(0), 2(1), 6(2), 3(3), 1(5), 5(9) -> three slices of two
    assert popularity_groups(counts, 3, "items").tolist() == [-1, 2, 0, 1, 0, 2, 1]
    assert popularity_groups([0, 1, 1, 1, 1, 6], 2, "interactions").tolist() == [-1, 0, 0, 0, 0, 1]
    assert popularity_groups([0, 2, 2, 3, 3], 2, "interactions").tolist() == [-1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="cannot fill"):
        popularity_groups([0, 1, 2], 5)


def test_group_shares_sum_to_one_and_skip_padding():
    groups = np.array([-1, 2, 0, 1, 0, 2, 1])
    shares, counts = group_shares(torch.tensor([[1, 2, -1], [5, 5, 3]]), groups, 3)
    assert counts.tolist() == [1, 1, 3]
    assert shares.tolist() == pytest.approx([0.2, 0.2, 0.6]) and shares.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- temporal


def test_reverse_histories_reverses_only_the_history():
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0], [7, 8, 9, 10]])
    lengths = torch.tensor([3, 2, 1, 4])
    out = reverse_histories(seq, lengths)
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0], [6, 0, 0, 0], [10, 9, 8, 7]]
    assert torch.equal(reverse_histories(out, lengths), seq)


def test_list_change_rates_and_change_rate():
    a = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]])
    b = torch.tensor([[1, 2, 3], [5, 4, 6], [7, 8, 2], [1, 1, 1]])
    assert list_change_rates(a, b) == {"list_changed": 0.5, "set_changed": 0.25}
    assert change_rate(0.10, 0.08) == pytest.approx(-0.2)
    assert math.isnan(change_rate(0.0, 0.1))


# ----------------------------------------------------------------------------- a fake generative model


EOS = 1


def _title_tokens(title: str) -> list[int]:
    return [2 + (ord(c) % 40) for c in title] + [EOS]


class _Prompts:
    def __init__(self, sequences):
        self._sequences = sequences

    def all_target_sequences(self):
        return self._sequences


class FakeGenerative:
    """Recommends the history, most recent first (so reversal flips the list); a fixed list without history."""

    ITEM_SEQ, ITEM_SEQ_LEN, POS_ITEM_ID = "item_id_list", "item_length", "item_id"

    def __init__(self, sequences):
        self.prompts = _Prompts(sequences)
        self.no_history_calls = 0

    def parameters(self):
        return iter(())

    def recommend_histories(self, histories, k, without_history=False):
        out = torch.full((len(histories), k), -1, dtype=torch.long)
        for row, h in enumerate(histories):
            items = list(range(1, k + 1)) if without_history else list(reversed(h))[:k]
            out[row, : len(items)] = torch.tensor(items)
        self.no_history_calls += bool(without_history)
        return out


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    from recbole.data import data_preparation

    from recbole_llm.config import Config
    from recbole_llm.quick_start import create_dataset

    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    config = Config(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"}
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    dataset = test.dataset
    titles = dataset.item_titles()
    sequences = [[]] + [_title_tokens(t) for t in titles[1:]]
    trained = type("Trained", (), {})()
    trained.config, trained.train_data, trained.valid_data, trained.test_data = config, train, valid, test
    trained.model = FakeGenerative(sequences)
    return Run("Fake", {"run": "Fake"}, trained)


def test_popularity_analysis_with_and_without_history(tiny_run):
    from recbole_llm.analysis.popularity import analyse_run

    shares, summary = analyse_run(tiny_run, k=3, n_groups=2)
    table = shares.pivot_table(index="condition", columns="group", values="share")
    assert np.allclose(table.sum(axis=1), 1.0)
    # the fake recommends the (<= 3 most recent) history items, so with_history ~ history mix of those
    test = tiny_run.trained.test_data.dataset.inter_feat
    recent = [
        row[:n].tolist()[::-1][:3] for row, n in zip(test["item_id_list"], test["item_length"], strict=True)
    ]
    n = tiny_run.trained.train_data.dataset.item_num
    groups = popularity_groups(
        torch.bincount(tiny_run.trained.train_data.dataset.inter_feat["item_id"], minlength=n), 2
    )
    expected, _ = group_shares(torch.tensor([i for r in recent for i in r]), groups, 2)
    assert table.loc["with_history"].tolist() == pytest.approx(expected.tolist())
    expected_none, _ = group_shares(torch.tensor([1, 2, 3]), groups, 2)
    assert table.loc["without_history"].tolist() == pytest.approx(expected_none.tolist())
    assert tiny_run.trained.model.no_history_calls == 1  # same list for two users: one decode stands for all
    assert summary["n_items"].sum() == n - 1 == len(TITLES)


def test_temporal_analysis_on_fake_model(tiny_run):
    from recbole_llm.analysis.temporal import analyse_run

    rows = {r["metric"]: r for r in analyse_run(tiny_run, k=10)}
    test = tiny_run.trained.test_data.dataset.inter_feat
    hist = [row[:n].tolist() for row, n in zip(test["item_id_list"], test["item_length"], strict=True)]
    targets = test["item_id"].tolist()
    # original list = history newest first, reversed input gives it oldest first
    hr5 = np.mean([t in h[::-1][:5] for h, t in zip(hist, targets, strict=True)])
    hr5_rev = np.mean([t in h[:5] for h, t in zip(hist, targets, strict=True)])
    assert rows["hit@5"]["original"] == pytest.approx(hr5) and rows["hit@5"]["reversed"] == pytest.approx(
        hr5_rev
    )
    assert rows["list_changed@10"]["change_rate"] == pytest.approx(np.mean([len(h) > 1 for h in hist]))
    assert rows["set_changed@10"]["change_rate"] == 0.0


# ----------------------------------------------------------------------------- IG statistics


WORKED = ([[1, 2, 9], [1, 3, 9], [5, 9]], [1.0, 1.0, 2.0])  # trie.py's worked example, EOS = 9


def test_reference_trie_matches_the_worked_example():
    trie = ReferenceTrie(*WORKED)
    h = -0.25 * math.log(0.25)
    assert trie.score[0] == pytest.approx(3 * h)  # 1.0397
    assert trie.entropies([1, 2, 9]) == pytest.approx([2 * h, h, h])
    assert trie.information_gain([1, 2, 9]) == pytest.approx([h, h, 0.0])
    assert trie.information_gain([5, 9]) == pytest.approx([2 * h, 0.0])


def test_path_entropies_equal_title_trie_arrays():
    from recbole_llm.model.trie import TitleTrie

    rng = np.random.default_rng(0)
    sequences = [[int(t) for t in rng.integers(2, 6, size=rng.integers(1, 4))] + [1] for _ in range(30)]
    sequences.append(list(sequences[0]))  # a duplicate title shares a leaf
    weights = rng.integers(0, 5, size=len(sequences)).astype(float)
    weights[0] = 3.0
    trie = TitleTrie.build(sequences, list(range(1, len(sequences) + 1)), item_weight=weights)
    values, valid = item_path_entropies(trie, torch.arange(1, len(sequences) + 1))
    for row, expected in enumerate(path_entropies(sequences, weights)):
        assert values[row][valid[row]].tolist() == pytest.approx(expected, abs=1e-12)


def test_zero_ig_share_by_hand_and_as_title_trie():
    from recbole_llm.model.trie import TitleTrie

    trie = ReferenceTrie(*WORKED)
    ig = [trie.information_gain(s) for s in WORKED[0]]
    table = torch.zeros(3, 3, dtype=torch.float64)
    valid = torch.zeros(3, 3, dtype=torch.bool)
    for i, row in enumerate(ig):
        table[i, : len(row)] = torch.tensor(row)
        valid[i, : len(row)] = True
    # tokens written 1, 1 and 2 times: 3 + 3 + 2*2 = 10 tokens, zero IG only on EOS: 1 + 1 + 2 = 4
    stats = zero_ig_statistics(table, valid, [1, 1, 2])
    assert (stats["tokens"], stats["zero_ig_tokens"], stats["zero_ig_share"]) == (10, 4, 0.4)
    title_trie = TitleTrie.build(WORKED[0], [1, 2, 3], item_weight=WORKED[1])
    assert title_trie.zero_ig_share(weighted=True) == pytest.approx(0.4)


def test_entropy_by_step_counts_only_reached_steps():
    values = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mean, count = entropy_by_step(values, valid)
    assert mean[:2].tolist() == [2.0, 2.0] and math.isnan(mean[2]) and count.tolist() == [2, 1, 0]


def test_ig_stats_analysis_matches_reference_trie(tiny_run):
    from recbole_llm.analysis.ig_stats import analyse_run

    zero_rows, step_rows = analyse_run(tiny_run, k=3)
    model = tiny_run.trained.model
    sequences = model.prompts.all_target_sequences()
    n = len(sequences)
    counts = torch.bincount(tiny_run.trained.train_data.dataset.inter_feat["item_id"], minlength=n).double()
    ref = ReferenceTrie(sequences[1:], counts[1:].tolist())
    tokens = sum(counts[i] * len(sequences[i]) for i in range(1, n))
    zeros = sum(
        counts[i] * sum(abs(g) < 1e-9 for g in ref.information_gain(sequences[i])) for i in range(1, n)
    )
    train_row = next(r for r in zero_rows if r["scope"] == "train_target_tokens")
    assert train_row["zero_ig_share"] == pytest.approx(float(zeros / tokens))
    steps = pd.DataFrame(step_rows)
    truth = steps[steps["source"] == "ground_truth"].set_index("step")["mean_entropy"]
    targets = tiny_run.trained.test_data.dataset.inter_feat["item_id"].tolist()
    assert truth[1] == pytest.approx(np.mean([ref.entropies(sequences[t])[0] for t in targets]))
    diff = steps[steps["source"] == "difference"].set_index("step")["mean_entropy"]
    pred = steps[steps["source"] == "predicted"].set_index("step")["mean_entropy"]
    assert diff[1] == pytest.approx(pred[1] - truth[1])


# ----------------------------------------------------------------------------- end to end on SASRec


def test_commands_on_a_finished_sasrec_run(tmp_path, monkeypatch):
    from recbole_llm.analysis.__main__ import main
    from recbole_llm.quick_start import load_trained, run_recbole_llm

    write_prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run", "--state=ERROR", "--show_progress=False", "--hidden_size=16"])
    result = run_recbole_llm(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "epochs": 1}
    )
    out = tmp_path / "analysis"
    monkeypatch.setattr(sys, "argv", ["analysis"])
    temporal = main(["temporal", result["results_file"], "--output", str(out)])
    frame = pd.read_csv(temporal["csv"]).set_index("metric")
    for metric, value in result["test_result"].items():  # rank_items + RecBole metrics = the trainer's test
        assert frame.loc[metric, "original"] == pytest.approx(value, abs=1e-4)
    popularity = main(["popularity", result["results_file"], "--output", str(out), "--groups", "2"])
    shares = pd.read_csv(popularity["csv"])
    assert np.allclose(shares.groupby("condition")["share"].sum(), 1.0)
    assert set(shares["condition"]) == {
        "with_history",
        "history_items",
        "test_targets",
    }  # no history-free SASRec
    compare = main(["compare", str(tmp_path / "results" / "tiny"), "--base", "SASRec", "--output", str(out)])
    for files in (temporal, popularity, compare):
        assert all(path.stat().st_size > 0 for path in files.values())
    with pytest.raises(ValueError, match="LLMGenRec"):
        main(["ig-stats", result["results_file"], "--output", str(out)])
    neighbour = json.loads(Path(result["results_file"]).read_text()) | {"run": "GRU4Rec", "model": "GRU4Rec"}
    (tmp_path / "results" / "tiny" / "GRU4Rec-0.json").write_text(json.dumps(neighbour))
    logged = []
    log_same_split_report(
        result["results_file"], type("L", (), {"info": logged.append, "warning": logged.append})()
    )
    assert len(logged) == 1 and "| SASRec (base) |" in logged[0] and "| GRU4Rec |" in logged[0]
    trained = load_trained(result["results_file"])
    with pytest.raises(ValueError, match="without the history"):
        rank_items(
            trained.model, trained.test_data.dataset.inter_feat[torch.arange(2)], 5, without_history=True
        )


# ----------------------------------------------------------------------------- LLMGenRec: IG loss, TensorBoard, CLIs


def _hand_threshold(sequences, counts, ref) -> float:
    """Weighted lower median of the positive token IGs of every item, weighted by its target count."""
    pairs = sorted(
        (g, float(counts[i]))
        for i in range(1, len(sequences))
        if counts[i] > 0
        for g in ref.information_gain(sequences[i])
        if g > 1e-9
    )
    total = sum(w for _, w in pairs)
    cum = 0.0
    for g, w in pairs:
        cum += w
        if cum >= total / 2:
            return g
    raise AssertionError("no positive IG")


def _hand_groups(ig_values, threshold):
    return ["zero" if abs(g) <= 1e-9 else "low" if g <= threshold else "high" for g in ig_values]


def _llm_config(root, model_dir, **extra):
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
        "dropout": 0.0,
    }
    config.update(extra)
    return config


def test_ig_loss_hook_equals_hand_computation(workspace, monkeypatch):
    """One training forward pass: group means = per-token CE grouped by an independent IG reference."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import load_run

    root, model_dir = workspace
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["x"])
    config = Config(
        model="LLMGenRec", dataset="tiny", config_dict=_llm_config(root, model_dir, objective="cft")
    )
    _, (train, _, _), model, trainer = load_run(config, quiet=True)
    trainer._setup_ig_loss_log()  # what fit() does: the tracker of <run_dir>/ig_loss.csv
    tracker = model.ig_loss_tracker
    sequences = model.prompts.all_target_sequences()
    counts = model.popularity.double().tolist()
    ref = ReferenceTrie(sequences[1:], counts[1:])
    threshold = _hand_threshold(sequences, counts, ref)
    assert tracker.threshold == pytest.approx(threshold)

    inter = train.dataset.inter_feat[torch.arange(8)]
    model.train()
    model(inter)  # cft: factual + counterfactual pass; only the factual tokens are logged
    means = tracker.flush(0)

    model.eval()
    histories = model.histories(inter)
    targets = inter["item_id"].tolist()
    with torch.no_grad():
        logits = model._target_logits(model.prompts.build(histories, targets)).double()
    labels = [t for item in targets for t in sequences[item]]
    ce = (-logits.log_softmax(-1)[torch.arange(len(labels)), torch.tensor(labels)]).tolist()
    groups = _hand_groups([g for item in targets for g in ref.information_gain(sequences[item])], threshold)
    frame = pd.read_csv(tracker.csv_path).set_index("group")
    for group in ("zero", "low", "high"):
        values = [c for c, g in zip(ce, groups, strict=True) if g == group]
        assert values, f"the small case must have {group}-IG tokens"
        assert means[group] == pytest.approx(np.mean(values), rel=1e-5)
        assert frame.loc[group, "tokens"] == len(values)
    assert tracker.csv_path.parent == trainer.run_dir


@pytest.fixture(scope="module")
def finished_llm_run(workspace):
    """A 2-epoch IGD run and a SASRec run on the tiny fixture (cwd = workspace, so log_tensorboard/ lands there)."""
    from recbole_llm.quick_start import run_recbole_llm

    root, model_dir = workspace
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(sys, "argv", ["x"])
        llm = run_recbole_llm(
            model="LLMGenRec",
            dataset="tiny",
            config_dict=_llm_config(root, model_dir, objective="igd", epochs=2, stopping_step=5),
        )
        sasrec = run_recbole_llm(
            model="SASRec",
            dataset="tiny",
            config_dict={
                "data_path": str(root / "data"),
                "results_dir": str(root / "results"),
                "checkpoint_dir": str(root / "saved"),
                "epochs": 1,
                "hidden_size": 16,
                "eval_sample_num": 6,
                "state": "ERROR",
                "show_progress": False,
            },
        )
    return root, llm, sasrec


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_writes_ig_loss_csv_and_tensorboard(finished_llm_run, monkeypatch):
    from recbole_llm.quick_start import load_trained

    root, result, _ = finished_llm_run
    run_dir = Path(result["checkpoint"]).parent
    info = json.loads((run_dir / "run.json").read_text())
    assert info["model"] == "LLMGenRec" and info["run"] == "LLMGenRec-igd-d3"
    frame = pd.read_csv(run_dir / "ig_loss.csv")
    assert frame["epoch"].tolist() == [0, 0, 0, 1, 1, 1]
    assert frame["group"].tolist()[:3] == ["zero", "low", "high"]
    # every training sample is seen once per epoch: token counts per group by hand
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["x"])
    trained = load_trained(run_dir)  # the run folder alone is enough to reload (run.json)
    model = trained.model
    sequences = model.prompts.all_target_sequences()
    counts = model.popularity.double().tolist()
    ref = ReferenceTrie(sequences[1:], counts[1:])
    threshold = _hand_threshold(sequences, counts, ref)
    train_targets = trained.train_data.dataset.inter_feat["item_id"].tolist()
    groups = _hand_groups([g for t in train_targets for g in ref.information_gain(sequences[t])], threshold)
    for epoch in (0, 1):
        got = frame[frame["epoch"] == epoch].set_index("group")
        assert {g: int(got.loc[g, "tokens"]) for g in ("zero", "low", "high")} == {
            g: groups.count(g) for g in ("zero", "low", "high")
        }
        assert np.isfinite(got["mean_loss"]).all() and (got["mean_loss"] > 0).all()
        assert got["threshold"].iloc[0] == pytest.approx(threshold)

    events = list(Path(info["tensorboard_dir"]).rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {info['tensorboard_dir']}"
    scalars = _scalars(info["tensorboard_dir"])
    assert [s for s, _ in scalars["Loss/Train"]] == [0, 1]
    assert [s for s, _ in scalars["Valid_score"]] == [0, 1]
    assert scalars["IG_loss/zero"][1][1] == pytest.approx(frame["mean_loss"][3], rel=1e-6)
    assert scalars["Test/hit@10"] == [(1, pytest.approx(result["test_result"]["hit@10"]))]
    assert scalars["Valid/loss"][1][1] == pytest.approx(result["best_valid_result"]["loss"], abs=1e-5)


def test_metric_validation_is_not_logged_as_test_and_ig_log_can_be_off(workspace, monkeypatch):
    from recbole_llm.quick_start import run_recbole_llm

    root, model_dir = workspace
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["x"])
    result = run_recbole_llm(
        model="LLMGenRec",
        dataset="tiny",
        config_dict=_llm_config(
            root, model_dir, log_ig_loss=False, valid_metric="NDCG@10", valid_metric_bigger=True
        ),
    )
    run_dir = Path(result["checkpoint"]).parent
    assert not (run_dir / "ig_loss.csv").exists()
    scalars = _scalars(json.loads((run_dir / "run.json").read_text())["tensorboard_dir"])
    assert "IG_loss/zero" not in scalars
    assert scalars["Valid/ndcg@10"] == [(0, pytest.approx(result["best_valid_result"]["ndcg@10"]))]
    assert scalars["Test/ndcg@10"] == [(0, pytest.approx(result["test_result"]["ndcg@10"]))]


def test_every_command_on_a_finished_llm_run(finished_llm_run, monkeypatch):
    from recbole_llm.analysis.__main__ import main

    root, llm, sasrec = finished_llm_run
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["analysis"])
    out = root / "out"
    run_dir = str(Path(llm["checkpoint"]).parent)

    files = main(["compare", str(root / "results" / "tiny"), "--base", "SASRec", "--output", str(out)])
    table = pd.read_csv(files["csv"]).set_index("run")
    for metric in ("hit@10", "ndcg@10"):
        base = sasrec["test_result"][metric]
        expected = (llm["test_result"][metric] - base) / base if base else math.nan
        got = table.loc["LLMGenRec-igd-d3", f"{metric}_improv"]
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)

    files = main(
        ["popularity", llm["results_file"], "--max-users", "4", "--groups", "3", "--output", str(out)]
    )
    shares = pd.read_csv(files["csv"])
    assert set(shares["condition"]) == {"with_history", "without_history", "history_items", "test_targets"}
    assert np.allclose(shares.groupby("condition")["share"].sum(), 1.0)
    assert shares.loc[shares["condition"] == "with_history", "count"].sum() == 4 * 10  # 4 users x top-10

    files = main(["temporal", run_dir, "--output", str(out)])
    frame = pd.read_csv(files["csv"]).set_index("metric")
    assert frame.loc["hit@10", "n_users"] == 6
    for metric, value in llm["test_result"].items():  # the analysis decodes exactly like the run's test
        assert frame.loc[metric, "original"] == pytest.approx(value, abs=1e-4)
    assert set(frame.index) >= {"hit@5", "ndcg@10", "list_changed@10", "set_changed@10"}

    files = main(["ig-stats", run_dir, "--max-users", "4", "--k", "5", "--output", str(out)])
    zero = pd.read_csv(files["zero_csv"]).set_index("scope")
    assert 0 < zero.loc["train_target_tokens", "zero_ig_share"] < 1
    steps = pd.read_csv(files["steps_csv"])
    assert steps.loc[(steps["source"] == "predicted") & (steps["step"] == 1), "count"].item() == 4 * 5

    # zero-ig needs no trained run: the same Table-4 numbers from the dataset and the tokenizer alone.
    model_dir = json.loads(Path(llm["results_file"]).read_text())["config"]["llm_path"]  # the run's tokenizer
    files = main(
        ["zero-ig", "tiny", "--output", str(root / "zero"), "--set", f"data_path={root / 'data'}"]
        + ["--set", f"llm_path={model_dir}", "--set", "state=ERROR"]
    )
    untrained = pd.read_csv(files["csv"]).set_index("scope")
    for scope in ("train_target_tokens", "catalogue_tokens"):
        for column in ("tokens", "zero_ig_tokens", "zero_ig_share"):
            assert untrained.loc[scope, column] == pytest.approx(zero.loc[scope, column])

    files = main(["ig-loss", run_dir, llm["results_file"], "--output", str(out)])
    frame = pd.read_csv(files["csv"])
    assert len(frame) == 2 * 6  # the same run given twice: 2 epochs x 3 groups each
    for path in out.iterdir():
        assert path.stat().st_size > 0
    assert {p.name for p in out.glob("*.png")} == {
        "comparison.png",
        "popularity_groups.png",
        "temporal.png",
        "ig_entropy_steps.png",
        "ig_loss.png",
    }


def test_ig_loss_command_on_two_epochs(tmp_path):
    tracker = IGLossTracker(tmp_path / "run" / "ig_loss.csv", threshold=0.6)
    tracker.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))
    tracker.update(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    tracker.flush(0)
    tracker.update_from_logits(torch.zeros(3, 7), torch.tensor([1, 2, -100]), torch.tensor([0.0, 0.0, 5.0]))
    tracker.flush(1)
    files = run_ig_loss([tmp_path / "run"], output=tmp_path / "out")
    assert files["png"].stat().st_size > 1000 and len(pd.read_csv(files["csv"])) == 6


def test_ig_loss_command_on_a_single_epoch(tmp_path):
    tracker = IGLossTracker(tmp_path / "run" / "ig_loss.csv", threshold=1.0)
    tracker.update(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0.0, 0.5, 2.0]))
    tracker.flush(0)
    files = run_ig_loss([tmp_path / "run" / "ig_loss.csv"], output=tmp_path / "out")
    frame = pd.read_csv(files["csv"]).set_index("group")
    assert frame["mean_loss"].to_dict() == {"zero": 1.0, "low": 3.0, "high": 5.0}
    assert files["png"].stat().st_size > 1000


class _PrecisionProbe(FakeGenerative):
    def __init__(self, mixed_precision):
        super().__init__([[]])
        self.config = {"mixed_precision": mixed_precision, "device": "cpu"}
        self.seen = None

    def recommend_histories(self, histories, k, without_history=False):
        self.seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().recommend_histories(histories, k, without_history)


@pytest.mark.parametrize(("setting", "expected"), [("bf16", (True, torch.bfloat16)), ("no", (False, None))])
def test_analyses_decode_under_the_runs_own_precision(setting, expected):
    """bf16 evaluation (mixed_precision auto on a bf16 CPU) must not be re-decoded in fp32 by the analyses."""
    from recbole.data.interaction import Interaction

    model = _PrecisionProbe(setting)
    inter = Interaction({"item_id_list": torch.tensor([[1, 2, 0]]), "item_length": torch.tensor([2])})
    assert rank_items(model, inter, 3).tolist() == [[2, 1, -1]]
    enabled, dtype = model.seen
    assert enabled == expected[0] and (expected[1] is None or dtype == expected[1])
    assert not torch.is_autocast_enabled("cpu")  # restored afterwards
