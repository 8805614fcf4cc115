"""The generative path feeds RecBole's own metric classes (trainer and analyses alike); numbers by hand."""

import math
import sys

import pytest
import torch
from recbole.evaluator import Collector, Evaluator

from recbole_llm.config import Config
from recbole_llm.trainer.evaluation import evaluate_ranked, ranked_to_topk


@pytest.fixture
def evaluator_config(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    return Config(model="SASRec", dataset="ml-100k", config_dict={"topk": [1, 3], "metrics": ["Hit", "NDCG"]})


def test_ranked_lists_give_hand_computed_hr_and_ndcg(evaluator_config):
    ranked = torch.tensor([[3, 5, 7], [1, 2, 4], [9, -1, -1]])
    targets = torch.tensor([5, 8, 9])
    struct = Collector(evaluator_config).get_data_struct()
    struct.set("rec.topk", ranked_to_topk(ranked, targets))
    result = Evaluator(evaluator_config).evaluate(struct)
    assert result["hit@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["hit@3"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["ndcg@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3, abs=1e-4)


def test_padding_slots_never_hit():
    # a real target is never -1; a -1 slot must not match any real item id
    assert ranked_to_topk(torch.tensor([[-1, 4]]), torch.tensor([4])).tolist() == [[0, 1, 1]]


def test_evaluate_ranked_uses_recbole_metrics_by_hand():
    ranked = torch.tensor([[3, 5, 7], [1, 2, 4], [9, -1, -1]])
    result = evaluate_ranked(ranked, torch.tensor([5, 8, 9]), {"metrics": ["Hit", "NDCG"], "topk": [1, 3]})
    assert result["hit@1"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["hit@3"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 3, abs=1e-6)


def test_analyses_score_with_the_trainers_functions():
    import recbole_llm.analysis.common as common

    assert common.evaluate_ranked is evaluate_ranked  # one scoring for runs and analyses
