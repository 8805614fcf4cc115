"""The benchmark command: a smoke run writes every key of the JSON, and the decoder comparison really
compares outputs (a wrong decoder is caught)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import TARGETS
from benchmarks.__main__ import main
from benchmarks.catalogue import synthetic_titles
from benchmarks.decoder import compare_rankings, run_decoder
from benchmarks.report import markdown_table, passes
from benchmarks.workload import load_workload
from recbole_llm.model.decoding import constrained_beam_search
from recbole_llm.model.temporal import counterfactual_index
from recbole_llm.model.trie import TitleTrie
from tests.fixtures import write_prepared
from tests.test_decoding import CAT_A, LLAMA, PROMPTS


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench") / "data"
    write_prepared(data)
    threads = torch.get_num_threads()
    try:
        yield load_workload("tiny", "tiny", str(data), eval_samples=3)
    finally:
        torch.set_num_threads(threads)


def test_quick_run_writes_every_key(tmp_path, workload):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--quick", "--out", str(out), "--users", "3", "--trie-items", "500"], workload=workload)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    res = json.loads(out.read_text())
    assert isinstance(res["machine"], str) and "torch" in res["machine"] and "cores" in res["machine"]
    assert set(res["step_ratio"]) == {"pos", "cft", "cetrec", "igd"}
    assert all(v > 0 for v in res["step_ratio"].values())
    assert res["decoder_speedup"] > 0 and res["decoder"]["users"] == 3
    # The comparison ran on every user and found the outputs identical.
    assert res["decoder_outputs_identical"] is True
    ident = res["decoder"]["identical"]
    assert ident["users"] == 3 and ident["users_same_order"] + ident["users_tie_swaps"] == 3
    assert 0.0 <= res["padding_share"] < 1.0
    assert res["padding"]["padding_share_unsorted"] >= res["padding_share"]
    assert res["trie_build_seconds"] > 0 and res["trie_build_peak_mb"] > 0
    assert res["trie"]["items"] == 500
    assert res["gpu"] is None and res["load_average"]["start"]
    assert set(res["met"]) == set(TARGETS)
    assert "| decoder" in markdown_table(res)
    full = res["full_split"]  # every path ran on the same users; the fp32 check compared them all
    assert full["users"] == 3 and set(full["users_per_s"]) == {"today", "fast", "generate"}
    assert full["fp32_fast_equals_today"]["identical"] and full["fp32_fast_equals_today"]["users"] == 3
    assert full["floor"]["block_tokens"] > 0 and full["floor"]["head_rows"] >= 3
    assert res["full_split_minutes"] == pytest.approx(9834 / full["users_per_s"]["fast"] / 60)


def test_only_one_section_keeps_the_others_from_the_earlier_json(tmp_path, workload):
    """``--only padding`` after a full run (the committed latest.json): the other sections' numbers stay,
    marked as kept with where they were measured; padding is measured again."""
    old = json.loads((Path(__file__).resolve().parent.parent / "benchmarks/results/latest.json").read_text())
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(old))
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--out", str(out), "--only", "padding"], workload=workload) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["decoder"] == old["decoder"] and res["step_ratio"] == old["step_ratio"]  # kept
    assert res["padding"]["samples"] != old["padding"]["samples"]  # measured now, on the fixture
    assert "padding" not in res["kept_sections"] and "decoder" in res["kept_sections"]
    # where the decoder section was measured: the earlier JSON's own run, or where that one had kept it from
    measured = old.get("kept_sections", {}).get("decoder", {"machine": old["machine"]})["machine"]
    assert res["kept_sections"]["decoder"]["machine"] == measured
    assert res["met"]["decoder_speedup"] is True


def test_the_benchmark_options_on_the_command_line_are_not_read_as_run_keys(tmp_path, monkeypatch):
    """``python -m benchmarks --only full_split`` once died in RecBole's Config: "Unknown key 'only'"."""
    data = tmp_path / "data"
    write_prepared(data)
    monkeypatch.setattr("sys.argv", ["benchmarks/__main__.py", "--only", "full_split", "--threads", "1"])
    threads = torch.get_num_threads()
    try:
        loaded = load_workload("tiny", "tiny", str(data), eval_samples=2)
    finally:
        torch.set_num_threads(threads)
    assert loaded.config["eval_sample_num"] == 2
    assert sys.argv[1:] == ["--only", "full_split", "--threads", "1"]  # given back unchanged


def test_two_decoding_processes_each_decode_their_share_once(tmp_path):
    """The full_split's 2 processes x 1 thread (tiny model): each user is decoded exactly once, by the process
    of its share, and the slowest child's span gives the users/s."""
    from benchmarks.full_split import run_processes

    write_prepared(tmp_path / "data")
    split = run_processes(3, "tiny", str(tmp_path / "data"), batch=2, processes=2, backbone="tiny")
    assert split["users"] == 3 and split["users_per_s"] > 0
    parts = split["rankings"]
    assert sorted(u for part in parts for u in part["users"]) == [0, 1, 2]
    assert [len(part["leaves"]) for part in parts] == [len(part["users"]) for part in parts]


def _ranked(leaves, scores):
    return torch.tensor(leaves), torch.tensor(scores, dtype=torch.float32)


def test_compare_rankings_accepts_only_ties_as_reorderings():
    ninf = float("-inf")
    ref = _ranked([[3, 1, 2, -1]], [[-1.0, -2.0, -2.0, ninf]])
    assert compare_rankings(ref, ref)["identical"]
    tie_swap = _ranked([[3, 2, 1, -1]], [[-1.0, -2.0, -2.0, ninf]])
    res = compare_rankings(tie_swap, ref)
    assert res["identical"] and res["users_tie_swaps"] == 1
    wrong_order = _ranked([[1, 3, 2, -1]], [[-1.0, -2.0, -2.0, ninf]])  # same scores, titles moved
    assert not compare_rankings(wrong_order, ref)["identical"]
    other_title = _ranked([[3, 1, 4, -1]], [[-1.0, -2.0, -2.0, ninf]])
    assert not compare_rankings(other_title, ref)["identical"]
    other_score = _ranked([[3, 1, 2, -1]], [[-1.0, -2.0, -2.01, ninf]])
    assert "scores differ" in compare_rankings(other_score, ref)["first_mismatch"]
    shorter = _ranked([[3, 1, -1, -1]], [[-1.0, -2.0, ninf, ninf]])
    assert not compare_rankings(shorter, ref)["identical"]


def _fake_model(trie):
    return SimpleNamespace(llm=LLAMA, trie=trie, prompts=SimpleNamespace(pad_token_id=0))


def test_decoder_benchmark_passes_ours_and_catches_a_wrong_decoder():
    trie = TitleTrie.build(CAT_A, list(range(1, len(CAT_A) + 1)))
    res = run_decoder(_fake_model(trie), PROMPTS, num_beams=4, batch_size=2, log=lambda _: None)
    assert res["identical"]["identical"] and res["identical"]["users"] == len(PROMPTS)
    assert res["speedup"] > 0

    def swapped(*args, **kwargs):  # our decoder with ranks 1 and 2 of every user exchanged
        leaves, scores = constrained_beam_search(*args, **kwargs)
        return leaves[:, [1, 0, 2, 3]], scores

    with pytest.raises(AssertionError, match="differ from generate"):
        run_decoder(
            _fake_model(trie), PROMPTS, num_beams=4, batch_size=2, fast_fn=swapped, log=lambda _: None
        )


def test_synthetic_catalogue_is_books_like_and_deterministic():
    seqs, weights = synthetic_titles(3000, seed=1)
    again, _ = synthetic_titles(3000, seed=1)
    assert seqs == again and len(seqs) == 3000 and len(weights) == 3000
    assert all(s[-1] == 2 and 2 not in s[:-1] for s in seqs)  # EOS once, at the end
    mean = sum(len(s) for s in seqs) / len(seqs)
    assert 12 < mean < 30
    trie = TitleTrie.build(seqs, list(range(1, 3001)), weights)
    assert trie.num_leaves < 3000  # duplicate titles share a leaf
    assert trie.num_nodes < sum(len(s) for s in seqs) * 0.9  # shared prefixes


def test_targets_are_checked_in_the_right_direction():
    assert passes("decoder_speedup", 5.0) and not passes("decoder_speedup", 4.9)
    assert passes("step_ratio.cft", 1.4) and not passes("step_ratio.cft", 1.41)
    assert passes("padding_share", 0.099) and not passes("padding_share", 0.1)
    assert passes("trie_build_peak_mb", 1000) is True and passes("trie_build_peak_mb", None) is None


@pytest.mark.parametrize("objective", ["cft", "cetrec"])
def test_counterfactual_pass_reuses_the_instruction_kv_exactly(workload, objective):
    """Training speed: the counterfactual pass runs only what follows the shared instruction, and gives
    the same logits and gradients as running the whole counterfactual prompt."""
    model = workload.model(objective)
    model.train()
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.llm.modules())  # comparable
    inter = workload.train.inter_feat[:4]
    hist, targets = model.histories(inter), inter[model.POS_ITEM_ID].tolist()
    batch = model.prompts.build(hist, targets)
    cf = model.objective.counterfactual_inputs(model.prompts, batch, hist, targets)
    cf_batch, cf_index = cf.batch, cf.item_index
    if objective == "cft":
        assert torch.equal(
            cf_batch.input_ids, model.prompts.build(hist, targets, counterfactual=True).input_ids
        )
        assert cf_index is None
    else:
        assert cf_batch is batch
        assert torch.equal(cf_index, counterfactual_index(batch.item_index, batch.history_len, "earliest"))
    widths = []
    body = model.llm.get_decoder()
    handle = body.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        _, cache = model._run(batch, keep_cache=True)
        shared = model._counterfactual_logits(batch, cache, cf_batch, cf_index)
        plain = model._counterfactual_logits(batch, None, cf_batch, cf_index)
    finally:
        handle.remove()
        model.eval()
    n_shared = len(model.prompts.prefix_ids)  # CFT: the instruction, the only part both prompts share
    if objective == "cetrec":  # same tokens: the reuse ends at the first token whose temporal index the
        # counterfactual changes (the earliest item keeps its own index, so its title is shared as well)
        differs = (batch.item_index != cf_index.to(batch.item_index.device)).any(dim=0)
        n_shared = int(differs.long().argmax())
        assert (batch.item_index[:, :n_shared] >= 0).any(dim=1).all()  # every row reuses its first title
    assert widths[1] == cf_batch.input_ids.shape[1] - n_shared  # the shared part did not run again
    assert widths[2] == cf_batch.input_ids.shape[1]
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-5)
    params = [p for p in model.llm.parameters() if p.requires_grad][:3]
    g_shared = torch.autograd.grad(shared.square().sum(), params, retain_graph=True, allow_unused=True)
    g_plain = torch.autograd.grad(plain.square().sum(), params, allow_unused=True)
    for a, b in zip(g_shared, g_plain):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_gpu_check_trains_and_decodes_every_objective_with_every_decoder(workload):
    """``python -m benchmarks --gpu``'s matrix, run on the CPU with the tiny model: every cell runs, and the
    zero learning rate leaves the shared backbone as it was (so the cells measure the same weights)."""
    from benchmarks import OBJECTIVES
    from benchmarks.gpu import DECODER_CELLS, run_matrix

    before = {k: v.clone() for k, v in workload.llm.state_dict().items()}
    matrix = run_matrix(workload, "cpu", steps=2, micro_batch=2, users=3, autocast=None, log=lambda _: None)
    assert list(matrix) == list(OBJECTIVES)
    for cell in matrix.values():
        assert cell["train"]["steps"] == 2 and cell["train"]["step_seconds"] > 0
        assert list(cell["decode"]) == list(DECODER_CELLS)
        for decoded in cell["decode"].values():
            assert decoded["ranked_shape"] == [3, 10] and decoded["users_per_s"] > 0
    after = workload.llm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine --gpu runs the real check")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--gpu", "--out", str(tmp_path / "gpu.json")])
    assert not (tmp_path / "gpu.json").exists()
