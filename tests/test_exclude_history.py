"""``exclude_history``: no item of a sample's history is ever recommended, by any model (CFT §4.1.2,
CETRec §5.1.2: all non-interacted items are the candidates). Baselines mask full-sort scores; LLMGenRec
removes the history's titles from the trie during decoding, so no beam is spent on them."""

import sys

import pytest
import torch

from recbole_llm.config import Config
from recbole_llm.data.dataset import histories_of
from recbole_llm.model.decoding import constrained_beam_search, leaves_to_items
from recbole_llm.model.decoding.items import fill_by_popularity, history_mask, mask_history_scores
from recbole_llm.model.decoding.search import allowed_item_cumsum
from recbole_llm.model.grounding import bigrec_rank
from recbole_llm.model.trie import TitleTrie
from recbole_llm.quick_start import load_run
from recbole_llm.utils.config_access import check_exclude_history
from recbole_llm.utils.testing import tiny_model, tiny_tokenizer

EOS = 9


def test_mask_history_scores_hand_computed():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 4.0, 3.0, 2.0]])
    seq = torch.tensor([[2, 4, 0], [1, 0, 0]])  # right-padded histories
    out = mask_history_scores(scores, seq)
    inf = float("-inf")
    assert out.tolist() == [[inf, 1.0, inf, 3.0, inf], [inf, inf, 4.0, 3.0, 2.0]]
    assert scores[0, 2] == 2.0  # the input is not modified


def test_history_mask_and_allowed_item_cumsum():
    assert history_mask([[1, 3], [7]], 5).tolist() == [
        [False, True, False, True, False],
        [False, False, False, False, False],  # 7 is not an item id here: ignored
    ]
    # items 1=[1,2,EOS], 2=[1,3,EOS], 3=[5,EOS]; DFS item order 1, 2, 3
    trie = TitleTrie.build([[1, 2, EOS], [1, 3, EOS], [5, EOS]], [1, 2, 3])
    cs = allowed_item_cumsum(trie, [[2], [1, 2]])
    assert cs.tolist() == [[0, 1, 1, 2], [0, 0, 0, 1]]


def test_leaves_to_items_drops_excluded_items_of_a_shared_title():
    # items 1 and 2 share a title (one leaf); 3 has its own
    trie = TitleTrie.build([[1, EOS], [1, EOS], [4, EOS]], [1, 2, 3], item_weight=[1.0, 3.0, 1.0])
    leaves = torch.tensor([[0, 1]])
    assert leaves_to_items(trie, leaves, 3).tolist() == [[2, 1, 3]]
    assert leaves_to_items(trie, leaves, 3, exclude=history_mask([[2]], 4)).tolist() == [[1, 3, -1]]
    assert fill_by_popularity(
        torch.tensor([[3, -1]]), torch.tensor([2, 1, 3]), history_mask([[2]], 4)
    ).tolist() == [[3, 1]]


def test_search_never_returns_an_excluded_title_and_spends_no_beam_on_it():
    tok = tiny_tokenizer()
    model = tiny_model(tok, "llama", seed=1)
    titles = [[5, 6, 2], [5, 7, 2], [8, 2], [9, 10, 2], [9, 11, 2], [12, 2]]  # EOS = 2
    items = list(range(1, 7))
    trie = TitleTrie.build(titles, items)
    prompts = [[3, 4, 13], [14, 15]]
    full, full_scores = constrained_beam_search(model, prompts, trie, num_beams=6, pad_token_id=0)
    history = [[1, 3, 4], [6]]
    got, got_scores = constrained_beam_search(
        model, prompts, trie, num_beams=6, pad_token_id=0, exclude_items=history
    )
    for row, banned in enumerate(history):
        ranked = leaves_to_items(trie, got[row : row + 1], 6)[0].tolist()
        assert not set(ranked) & set(banned)
        # beams were not wasted: every remaining title is found, in the unmasked search's order
        expected = [i for i in leaves_to_items(trie, full[row : row + 1], 6)[0].tolist() if i not in banned]
        assert [i for i in ranked if i >= 0] == expected
        assert torch.isfinite(got_scores[row]).sum() == 6 - len(banned)


def test_bigrec_grounding_masks_excluded_items_before_ranking():
    item_emb = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # rows = items 1..4
    gen = torch.tensor([[[0.1], [2.9]]])  # generation 0 near row 0, generation 1 near row 3
    assert bigrec_rank(gen, item_emb, 3, rule="bigrec").tolist() == [[0, 1, 2]]
    exclude = torch.tensor([[True, False, False, False]])
    assert bigrec_rank(gen, item_emb, 3, rule="bigrec", exclude=exclude).tolist() == [[1, 2, 3]]
    # cft: best of each generation (rank-major), excluded rows removed before interleaving
    assert bigrec_rank(gen, item_emb, 3, rule="cft").tolist() == [[0, 3, 1]]
    assert bigrec_rank(gen, item_emb, 3, rule="cft", exclude=exclude).tolist() == [[1, 3, 2]]
    all_but_one = torch.tensor([[True, True, True, False]])
    assert bigrec_rank(gen, item_emb, 3, rule="cft", exclude=all_but_one).tolist() == [[3, -1, -1]]


def test_exclude_history_is_validated_once():
    assert check_exclude_history(None) is False and check_exclude_history(True) is True
    with pytest.raises(ValueError, match="exclude_history='yes' must be True or False"):
        check_exclude_history("yes")


def _config(model, data, extra):
    return Config(
        model=model,
        dataset="tiny",
        config_dict={"data_path": str(data), "state": "ERROR", "show_progress": False, **extra},
    )


@pytest.mark.parametrize("model_name", ["SASRec", "GRU4Rec", "Caser", "SASRecLLM", "GRU4RecLLM"])
def test_baselines_never_rank_a_history_item(workspace, monkeypatch, model_name):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    seen = {}
    llm = {"llm_path": str(model_dir), "checkpoint_dir": str(root / "saved")} if "LLM" in model_name else {}
    for exclude in (False, True):
        config = _config(model_name, root / "data", {"exclude_history": exclude, "epochs": 1, **llm})
        _, (_, _, test), model, trainer = load_run(config, quiet=True)
        model.eval()
        trainer.tot_item_num = test._dataset.item_num  # what Trainer.evaluate sets before scoring
        hits = 0
        for batch in test:
            inter, scores, _, _ = trainer._full_sort_batch_eval(batch)
            top = torch.topk(scores, 5, dim=1).indices.cpu()
            seq = inter[model.ITEM_SEQ].cpu()
            hits += int(sum(bool(set(t.tolist()) & set(s[s > 0].tolist())) for t, s in zip(top, seq)))
        seen[exclude] = hits
    assert seen[True] == 0
    assert seen[False] > 0  # the test can fail: without the key, an untrained model ranks history items


@pytest.mark.parametrize("decoder", ["d3", "bigrec"])
def test_llmgenrec_never_recommends_a_history_item(workspace, monkeypatch, decoder):
    monkeypatch.setattr(sys, "argv", ["run"])
    root, model_dir = workspace
    seen = {}
    for exclude in (False, True):
        config = _config(
            "LLMGenRec",
            root / "data",
            {
                "exclude_history": exclude,
                "llm_path": str(model_dir),
                "decoder": decoder,
                "eval_sample_num": 8,
            },
        )
        _, (_, _, test), model, _ = load_run(config, quiet=True, with_trainer=False)
        inter = test.dataset.inter_feat
        ranked = model.recommend(inter, 10)
        histories = histories_of(inter, model.ITEM_SEQ, model.ITEM_SEQ_LEN)
        seen[exclude] = sum(len(set(r.tolist()) & set(h)) for r, h in zip(ranked, histories))
        if exclude:  # a title of a non-history item is still reachable: lists are as long as candidates allow
            assert (ranked >= 0).sum(1).min() >= 4
    assert seen[True] == 0
    assert seen[False] > 0


def test_analyses_rank_a_baseline_as_its_run_did(workspace, monkeypatch):
    """The popularity and temporal analyses rank a SASRec run with the run's own ``exclude_history``."""
    from recbole_llm.analysis import common, popularity, temporal

    monkeypatch.setattr(sys, "argv", ["run"])
    root, _ = workspace
    hits, real = {}, common.rank_items
    for exclude in (False, True):
        config = _config("SASRec", root / "data", {"exclude_history": exclude})
        _, (train, valid, test), model, _ = load_run(config, quiet=True, with_trainer=False)
        model.eval()
        trained = type("Trained", (), {})()
        trained.config, trained.model = config, model
        trained.train_data, trained.valid_data, trained.test_data = train, valid, test
        ranked = []

        def spy(model, interaction, k, without_history=False, exclude_history=False, ranked=ranked):
            out = real(model, interaction, k, without_history, exclude_history)
            seq = interaction[model.ITEM_SEQ].cpu()
            ranked.extend(len(set(r.tolist()) & set(s[s > 0].tolist())) for r, s in zip(out, seq))
            return out

        monkeypatch.setattr(common, "rank_items", spy)
        run = common.Run("SASRec", {}, trained)
        popularity.analyse_run(run, k=5, n_groups=2)
        temporal.analyse_run(run, k=5)
        monkeypatch.undo()
        monkeypatch.setattr(sys, "argv", ["run"])
        hits[exclude] = sum(ranked)
        assert ranked  # both analyses went through rank_items
    assert hits[True] == 0
    assert hits[False] > 0  # can fail: an untrained SASRec ranks history items when nothing masks them
