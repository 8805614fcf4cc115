"""The README's *Extending* examples, executed as written: a new objective trains, a new scorer decodes.

Each example is the README's own code block (found by the file name on its first line), so the README
cannot drift from what the package accepts. The classes are unregistered afterwards.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.model.decoding.scorers import SCORERS, decoding_keys
from recbole_llm.model.llm_gen_rec import LLMGenRec
from recbole_llm.model.objectives import NORMAL, OBJECTIVES, build_objective, loss_weight_keys, weighted_total
from recbole_llm.quick_start import create_dataset
from recbole_llm.reporting.labels import label_keys

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(first_line: str) -> dict:
    """Run the README's ``python`` block that starts with ``first_line``; return its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    matches = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(matches) == 1, f"README has {len(matches)} python blocks starting with {first_line!r}"
    namespace = {"__name__": "readme_example"}
    exec(compile(matches[0], f"README.md ({first_line})", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


@pytest.fixture
def objective_example():
    namespace = readme_example("# recbole_llm/model/objectives/leading.py")
    yield namespace["LeadingTokensObjective"]
    del OBJECTIVES["leading"]


@pytest.fixture
def scorer_example():
    namespace = readme_example("# recbole_llm/model/decoding/scorers/ban_first_token.py")
    yield namespace["BanFirstToken"]
    del SCORERS["ban_first_token"]


def _model(workspace, monkeypatch, **keys) -> tuple[LLMGenRec, object]:
    root, model_dir = workspace
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    settings = {
        "data_path": str(root / "data"),
        "llm_path": str(model_dir),
        "train_sample_num": None,
        "dropout": 0.0,
        "state": "ERROR",
        "show_progress": False,
    }
    config = Config(model="LLMGenRec", dataset="tiny", config_dict={**settings, **keys})
    train, _, test = data_preparation(config, create_dataset(config))
    return LLMGenRec(config, train.dataset), (train, test)


def test_readme_objective_registers_validates_and_trains(objective_example, workspace, monkeypatch):
    assert "leading" in OBJECTIVES and OBJECTIVES["leading"] is objective_example
    with pytest.raises(ValueError, match="leading_tokens=0 must be a positive integer"):
        build_objective({"objective": "leading", "leading_tokens": 0})
    with pytest.raises(ValueError, match="choose one of sft, pos, cft, cetrec, igd, leading"):
        build_objective({"objective": "lead"})

    assert "leading_tokens" in label_keys() and "leading_tokens" in loss_weight_keys()

    model, (train, _) = _model(workspace, monkeypatch, objective="leading", leading_tokens=2)
    assert model.hyper_parameters()["leading_tokens"] == 2
    model.train()
    inter = train.dataset.inter_feat[:6]
    batch = model.prompts.build(model.histories(inter), inter[model.POS_ITEM_ID].tolist())
    lead = batch.target_t <= 2
    dens = model.loss_denominators(inter)
    assert dens[NORMAL].item() == lead.sum().item()  # known before the forward pass, from the targets
    loss = weighted_total(model(inter), dens, model.loss_coefficients)
    expected = F.cross_entropy(model._target_logits(batch)[lead].float(), batch.target_labels[lead])
    assert torch.allclose(loss, expected, atol=1e-6)  # the mean CE of the first two tokens, nothing else
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_readme_scorer_is_switched_on_by_its_key_and_changes_the_ranking(
    scorer_example, workspace, monkeypatch
):
    assert "ban_first_token" in decoding_keys() and "ban_first_token" in label_keys()
    plain, (_, test) = _model(workspace, monkeypatch, num_beams=12)
    assert plain.extra_scorers == []  # off unless its key is set
    histories = plain.histories(test.dataset.inter_feat[:3])
    ranked = plain.recommend_histories(histories, 12)
    first_token = {i: seq[0] for i, seq in enumerate(plain.prompts.all_target_sequences()) if seq}
    banned = first_token[int(ranked[0, 0])]  # the first token of user 0's top title

    model, _ = _model(workspace, monkeypatch, num_beams=12, ban_first_token=banned)
    assert [type(s) for s in model.extra_scorers] == [scorer_example]
    assert model.hyper_parameters()["ban_first_token"] == banned
    guarded = model.recommend_histories(histories, 12)
    for u in range(len(histories)):
        before = [i for i in ranked[u].tolist() if i > 0]
        after = [i for i in guarded[u].tolist() if i > 0]
        assert all(first_token[i] != banned for i in after)
        assert after == [i for i in before if first_token[i] != banned]  # the others keep their order
    assert len([i for i in ranked[0].tolist() if i > 0 and first_token[i] == banned]) >= 1
