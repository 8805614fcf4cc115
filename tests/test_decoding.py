"""Trie-constrained beam search: validity, equality with the Hugging Face oracle, exhaustive scoring,
the scorers (IG calibration, D3 ensemble, length penalty, a custom one), batching/left padding, item
expansion, random catalogues."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from benchmarks.hf_reference import generate_reference
from recbole_llm.model.decoding import DecodingSettings, constrained_beam_search, kv_cache, leaves_to_items
from recbole_llm.model.decoding.items import fill_by_popularity
from recbole_llm.model.decoding.scorers import (
    BeamScorer,
    BeamStep,
    D3Ensemble,
    IGCalibration,
    LengthPenalty,
    build_scorers,
    calibrated_step_scores,
    compose_scorers,
    ensemble_step_scores,
)
from recbole_llm.model.trie import TitleTrie

V, EOS = 64, 2
SMALL = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
)  # peaky distributions: few near-ties


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()


def _qwen2():
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()


LLAMA = _llama()
MODELS = {"llama": LLAMA, "qwen2": _qwen2()}

# Shared prefixes, a one-token title ([5]), a title that is a prefix of another ([3, 4] / [3, 4, 6]),
# duplicate titles (items 3 and 9 share [3, 4, 6]).
CAT_A = [
    [3, 4, 6, EOS],
    [3, 4, EOS],
    [3, 7, EOS],
    [3, 4, 6, EOS],
    [5, EOS],
    [8, 9, 10, 11, EOS],
    [8, 9, EOS],
    [12, 13, EOS],
    [3, 7, 14, EOS],
    [3, 4, 6, EOS],
]
CAT_B = [[t, EOS] for t in range(10, 22)] + [[10, 11, EOS], [10, 11, 12, EOS]]  # mostly one-token titles
CATALOGUES = {"a": CAT_A, "b": CAT_B}
PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46, 47, 48], [50], [33, 34, 35]]


def _trie(cat, weights=None):
    return TitleTrie.build(cat, list(range(1, len(cat) + 1)), weights)


def teacher_forced(model, prompt, tokens):
    """Per-token log p(y_t | prompt, y_<t) of one full path, computed independently (no cache, no padding)."""
    ids = torch.tensor([list(prompt) + list(tokens[:-1])])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return logp[pos, torch.tensor(tokens)].tolist()


def path_edges(trie, tokens):
    return [n - 1 for n in trie.walk(tokens)]


def exhaustive(model, prompt, trie, lp=0.0, alpha=0.0, step_extra=None):
    """Score of every title (sum of per-token scores / len**lp), best first."""
    out = []
    for leaf in range(trie.num_leaves):
        toks = trie.leaf_tokens(leaf)
        lps = teacher_forced(model, prompt, toks)
        edges = path_edges(trie, toks)
        total = 0.0
        for i, (x, e) in enumerate(zip(lps, edges)):
            if step_extra is not None:
                x = step_extra(toks[:i], toks[i], x)
            total += (1 - alpha * trie.edge_ig_norm[e].item()) * x
        out.append((total / len(toks) ** lp, leaf))
    return sorted(out, reverse=True)


def assert_same_ranking(la, sa, lb, sb, tol=1e-4):
    """Same ranked leaves; positions may differ only between (numerically) equal scores."""
    for u in range(la.shape[0]):
        ra = [(int(x), float(s)) for x, s in zip(la[u], sa[u]) if x >= 0]
        rb = [(int(x), float(s)) for x, s in zip(lb[u], sb[u]) if x >= 0]
        assert len(ra) == len(rb), (u, ra, rb)
        assert [s for _, s in ra] == pytest.approx([s for _, s in rb], abs=tol)
        where_a = {leaf: i for i, (leaf, _) in enumerate(ra)}
        for i, (leaf, s) in enumerate(rb):
            if ra[i][0] != leaf:
                j = where_a.get(leaf, len(ra) - 1)
                assert abs(ra[j][1] - s) <= tol, (u, ra, rb)


def check_valid(leaves, scores, trie, model, prompts, lp=0.0, alpha=0.0, k=None):
    """Every beam is a distinct real title, ranked by a score equal to its teacher-forced score."""
    for u, prompt in enumerate(prompts):
        row = leaves[u].tolist()
        n = sum(x >= 0 for x in row)
        assert all(x >= 0 for x in row[:n]) and all(x == -1 for x in row[n:])
        assert len(set(row[:n])) == n and all(0 <= x < trie.num_leaves for x in row[:n])
        assert all(math.isinf(s) for s in scores[u, n:].tolist())
        assert scores[u, :n].tolist() == sorted(scores[u, :n].tolist(), reverse=True)
        for leaf, s in zip(row[:n], scores[u, :n].tolist()):
            toks = trie.leaf_tokens(leaf)
            ws = [1 - alpha * trie.edge_ig_norm[e].item() for e in path_edges(trie, toks)]
            expect = sum(w * x for w, x in zip(ws, teacher_forced(model, prompt, toks))) / len(toks) ** lp
            assert s == pytest.approx(expect, abs=1e-4)
        if k is not None:
            assert n == min(k, trie.num_leaves)


# ---------------------------------------------------------------------------------------------- pure maths
def test_calibrated_step_scores_two_steps_by_hand():
    # Two steps, two beams. Step 1 from the root: log p = [-0.5, -1.5] with IG~ = [0, 1]; alpha = 0.2 ->
    # [-0.5 * 1, -1.5 * 0.8] = [-0.5, -1.2].  Step 2 (single child, IG~ = 0): log p = -0.7 -> -0.7.
    s1 = calibrated_step_scores(torch.tensor([[-0.5, -1.5]]), torch.tensor([[0.0, 1.0]]), 0.2)
    assert s1[0].tolist() == pytest.approx([-0.5, -1.2])
    s2 = calibrated_step_scores(torch.tensor([[-0.7]]), torch.tensor([[0.0]]), 0.2)
    # Totals: beam A = -0.5 - 0.7 = -1.2 ; beam B = -1.2 - 0.7 = -1.9 (uncalibrated: -1.2 vs -2.2).
    assert (s1[0] + s2[0, 0]).tolist() == pytest.approx([-1.2, -1.9])
    assert torch.equal(calibrated_step_scores(s1, torch.ones(1, 2), 0.0), s1)


def test_ensemble_step_scores_by_hand():
    out = ensemble_step_scores(
        torch.tensor([-1.0, -2.0]), torch.tensor([0.25, 0.75], dtype=torch.float64), 0.6
    )
    assert out.tolist() == pytest.approx([0.6 * -1 + 0.4 * math.log(0.25), 0.6 * -2 + 0.4 * math.log(0.75)])
    assert torch.equal(
        ensemble_step_scores(torch.tensor([-1.0]), torch.tensor([0.5]), 1.0), torch.tensor([-1.0])
    )


# ---------------------------------------------------------------------------------------------- scorers
# Two one-token titles: item 1 = [3, EOS] (weight 9), item 2 = [4, EOS] (weight 1). IG(root -> 3) is the
# entropy term of the sibling subtree, -0.1 log 0.1 = 0.230, IG(root -> 4) = -0.9 log 0.9 = 0.095, so the
# sibling-normalised IG~ of tokens [3, 4] is [1, 0].
TOY = [[3, EOS], [4, EOS]]


def _root_step(trie: TitleTrie) -> BeamStep:
    """The first decoding step of one user with one beam, as the search hands it to the scorers."""
    nodes = torch.zeros(1, dtype=torch.long)
    edges, valid = trie.children(nodes)
    return BeamStep(trie, 0, nodes, edges, valid, trie.edge_token[edges], torch.zeros(1, dtype=torch.long), 1)


def test_ig_calibration_scorer_by_hand():
    trie = _trie(TOY, [9, 1])
    step = _root_step(trie)
    assert step.tokens.tolist() == [[3, 4]] and trie.edge_ig_norm[step.edges].tolist() == [[1.0, 0.0]]
    logp = torch.tensor([[-0.1, -2.3]])
    # alpha = 0.2: [(1 - 0.2 * 1) * -0.1, (1 - 0.2 * 0) * -2.3] = [-0.08, -2.3]
    assert IGCalibration(0.2).token_scores(logp, step)[0].tolist() == pytest.approx([-0.08, -2.3])
    assert torch.equal(IGCalibration(0.0).token_scores(logp, step), logp)


def test_d3_ensemble_scorer_by_hand():
    trie = _trie(TOY, [9, 1])
    step = _root_step(trie)
    probs = torch.tensor([[0.0, 0.25, 0.75]])  # the traditional model: item 1 -> 0.25, item 2 -> 0.75
    # gs = 0.6: [0.6 * -0.1 + 0.4 * log 0.25, 0.6 * -2.3 + 0.4 * log 0.75] = [-0.6145177, -1.4950728]
    scorer = D3Ensemble(probs, 0.6).for_batch(torch.tensor([0]), trie)
    got = scorer.token_scores(torch.tensor([[-0.1, -2.3]]), step)
    assert got[0].tolist() == pytest.approx([-0.6145177, -1.4950728], abs=1e-6)
    with pytest.raises(RuntimeError, match="for_batch"):
        D3Ensemble(probs, 0.6).token_scores(torch.tensor([[-0.1, -2.3]]), step)
    with pytest.raises(ValueError, match="gs"):
        D3Ensemble(probs, 1.5)


def test_length_penalty_scorer_by_hand():
    total = torch.tensor([-3.0])
    assert LengthPenalty(1.0).finished_scores(total, 3).tolist() == [-1.0]  # -3 / 3
    assert LengthPenalty(2.0).finished_scores(total, 3).tolist() == pytest.approx([-3.0 / 9])
    # Early-stopping bound of a running beam with sum -2 after 2 tokens, titles up to 5 tokens long:
    running = torch.tensor([-2.0])
    assert LengthPenalty(1.0).attainable_scores(running, 2, None).tolist() == [-1.0]  # HF's default: now
    assert LengthPenalty(1.0).attainable_scores(running, 2, 5).tolist() == pytest.approx([-0.4])  # "never"
    assert LengthPenalty(-1.0).attainable_scores(running, 2, 5).tolist() == [-4.0]  # lp < 0: now is best
    # D3 decodes without length normalisation: no scorer at all, the base class changes nothing.
    assert torch.equal(BeamScorer().finished_scores(total, 3), total)


def test_build_scorers_follows_the_decoding_settings():
    probs = torch.ones(2, 11)
    assert build_scorers(DecodingSettings()) == []  # d3, alpha 0, gs 1: the plain log-probability
    settings = DecodingSettings(
        decoder="constrained", length_penalty=1.0, ig_alpha=0.2, ensemble_weight=0.5, ensemble_checkpoint="x"
    )
    scorers = build_scorers(settings, probs)
    assert [type(s) for s in scorers] == [D3Ensemble, IGCalibration, LengthPenalty]  # the order they apply
    assert (scorers[0].weight, scorers[1].alpha, scorers[2].penalty) == (0.5, 0.2, 1.0)
    with pytest.raises(ValueError, match="item probabilities"):
        build_scorers(settings)
    bigrec = DecodingSettings(decoder="bigrec", ensemble_weight=0.5)  # free generation: nothing to guide
    assert build_scorers(bigrec, probs) == []


def test_scorers_list_equals_the_knobs():
    trie = _trie(CAT_A, [1, 5, 2, 1, 3, 1, 1, 2, 4, 1])
    probs = torch.softmax(
        torch.randn(len(PROMPTS), len(CAT_A) + 1, generator=torch.Generator().manual_seed(5)), -1
    )
    knobs = dict(length_penalty=1.0, ig_alpha=0.5, ensemble=probs, ensemble_weight=0.7)
    by_knobs = constrained_beam_search(LLAMA, PROMPTS, trie, num_beams=6, batch_size=2, **knobs)
    by_list = constrained_beam_search(
        LLAMA, PROMPTS, trie, num_beams=6, batch_size=2, scorers=compose_scorers(**knobs)
    )
    assert torch.equal(by_knobs[0], by_list[0]) and torch.equal(by_knobs[1], by_list[1])
    plain = constrained_beam_search(LLAMA, PROMPTS, trie, num_beams=6, batch_size=2)
    assert not torch.equal(plain[1], by_list[1])
    with pytest.raises(ValueError, match="not both"):
        constrained_beam_search(LLAMA, PROMPTS, trie, ig_alpha=0.5, scorers=[IGCalibration(0.5)])


class BanFirstToken(BeamScorer):
    """A custom scorer: no title may start with ``token`` (say, a franchise the user asked not to see)."""

    def __init__(self, token: int):
        self.token = token

    def token_scores(self, scores: torch.Tensor, step: BeamStep) -> torch.Tensor:
        if step.step > 0:  # only the first title token is concerned
            return scores
        return scores.masked_fill(step.tokens == self.token, -math.inf)


def test_a_custom_scorer_changes_the_ranking():
    trie = _trie(CAT_A)
    k = trie.num_leaves  # beams for every title: the whole catalogue is ranked
    plain_leaves, plain_scores = constrained_beam_search(LLAMA, PROMPTS[:2], trie, num_beams=k)
    leaves, scores = constrained_beam_search(
        LLAMA, PROMPTS[:2], trie, num_beams=k, scorers=[BanFirstToken(3)]
    )
    for u in range(2):
        ranked = plain_leaves[u].tolist()
        banned = [leaf for leaf in ranked if trie.leaf_tokens(leaf)[0] == 3]
        kept = [leaf for leaf in ranked if trie.leaf_tokens(leaf)[0] != 3]
        assert banned  # the ban is not vacuous: titles starting with token 3 ranked before
        # The banned titles are gone, the others keep their order and their scores.
        assert leaves[u].tolist() == kept + [-1] * len(banned)
        expect = [plain_scores[u, ranked.index(x)].item() for x in kept]
        assert scores[u, : len(kept)].tolist() == pytest.approx(expect, abs=1e-5)
    # Composed with the papers' scorers, it applies on top of them (here after IGD's calibration).
    calibrated = constrained_beam_search(LLAMA, PROMPTS[:2], trie, num_beams=k, ig_alpha=0.5)
    both = constrained_beam_search(
        LLAMA, PROMPTS[:2], trie, num_beams=k, scorers=[*compose_scorers(ig_alpha=0.5), BanFirstToken(3)]
    )
    for u in range(2):
        expect = [x for x in calibrated[0][u].tolist() if trie.leaf_tokens(x)[0] != 3]
        assert both[0][u].tolist()[: len(expect)] == expect


# ---------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
@pytest.mark.parametrize("cat_name", ["a", "b"])
@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_equals_hf_generate_reference(model_name, cat_name, lp):
    model, trie = MODELS[model_name], _trie(CATALOGUES[cat_name])
    prompts = PROMPTS[:3]
    for k in (3, 6) if cat_name == "a" else (4,):
        ref = generate_reference(model, prompts, trie, num_beams=k, length_penalty=lp)
        for bs in (1, 3):
            fast = constrained_beam_search(
                model, prompts, trie, num_beams=k, length_penalty=lp, batch_size=bs
            )
            assert_same_ranking(fast[0], fast[1], *ref)
            check_valid(*fast, trie, model, prompts, lp=lp)


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_ig_calibration_equals_reference_processor(alpha):
    trie = _trie(CAT_A, [1, 5, 2, 1, 3, 1, 1, 2, 4, 1])
    ref = generate_reference(LLAMA, PROMPTS[:2], trie, num_beams=4, ig_alpha=alpha)
    fast = constrained_beam_search(LLAMA, PROMPTS[:2], trie, num_beams=4, ig_alpha=alpha)
    assert_same_ranking(fast[0], fast[1], *ref)
    check_valid(*fast, trie, LLAMA, PROMPTS[:2], alpha=alpha)


# ---------------------------------------------------------------------------------------------- exhaustive
@pytest.mark.parametrize(("lp", "early_stopping"), [(0.0, False), (0.0, True), (1.0, "never")])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_all_titles_ranked_exactly_when_beams_cover_the_catalogue(lp, early_stopping, alpha):
    trie = _trie(CAT_A, [1, 5, 2, 1, 3, 1, 1, 2, 4, 1])
    k = trie.num_leaves + 1
    leaves, scores = constrained_beam_search(
        LLAMA, PROMPTS, trie, num_beams=k, length_penalty=lp, ig_alpha=alpha, early_stopping=early_stopping
    )
    for u, prompt in enumerate(PROMPTS):
        expect = exhaustive(LLAMA, prompt, trie, lp=lp, alpha=alpha)
        got = [(s, x) for x, s in zip(leaves[u].tolist(), scores[u].tolist()) if x >= 0]
        assert [x for _, x in got] == [x for _, x in expect]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in expect], abs=1e-4)


def test_ig_changes_the_ranking_towards_high_ig_tokens():
    # With alpha the score of every title is recomputed with its own weights: check it moved at least one
    # title (the test must be able to fail when ig_alpha is ignored).
    trie = _trie(CAT_A, [1, 5, 2, 1, 3, 1, 1, 2, 4, 1])
    plain = constrained_beam_search(LLAMA, PROMPTS[:1], trie, num_beams=12)
    calib = constrained_beam_search(LLAMA, PROMPTS[:1], trie, num_beams=12, ig_alpha=0.9)
    assert not torch.allclose(plain[1][0, :8], calib[1][0, :8])


def test_d3_ensemble_matches_hand_computed_prefix_marginals():
    cat = CAT_A
    trie = _trie(cat)
    items = list(range(1, len(cat) + 1))
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(len(PROMPTS), len(cat) + 1, generator=gen) * 2, -1)
    probs[:, 0] = 0.0
    gs = 0.6

    def make_extra(u):
        def extra(prefix, tok, logp):
            under = lambda p: [i for i, s in zip(items, cat) if s[: len(p)] == p]  # noqa: E731
            siblings = {s[len(prefix)] for s in cat if s[: len(prefix)] == prefix}
            mass = {t: sum(probs[u, i].item() for i in under(prefix + [t])) for t in siblings}
            m = (mass[tok] + 1e-20) / sum(v + 1e-20 for v in mass.values())
            return gs * logp + (1 - gs) * math.log(m)

        return extra

    k = trie.num_leaves
    leaves, scores = constrained_beam_search(
        LLAMA, PROMPTS, trie, num_beams=k, ensemble=probs, ensemble_weight=gs
    )
    for u, prompt in enumerate(PROMPTS):
        expect = exhaustive(LLAMA, prompt, trie, step_extra=make_extra(u))
        assert leaves[u].tolist() == [x for _, x in expect]
        assert scores[u].tolist() == pytest.approx([s for s, _ in expect], abs=1e-4)
    # Callable source gives the same; gs = 1 ignores the ensemble.
    call = constrained_beam_search(
        LLAMA, PROMPTS, trie, num_beams=k, ensemble=lambda us: probs[us], ensemble_weight=gs, batch_size=2
    )
    assert torch.equal(call[0], leaves)
    plain = constrained_beam_search(LLAMA, PROMPTS, trie, num_beams=k)
    same = constrained_beam_search(LLAMA, PROMPTS, trie, num_beams=k, ensemble=probs, ensemble_weight=1.0)
    assert torch.equal(plain[0], same[0]) and not torch.allclose(plain[1], scores)


# ---------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
def test_batched_left_padded_equals_single_user(model_name):
    model, trie = MODELS[model_name], _trie(CAT_A)
    single = [constrained_beam_search(model, [p], trie, num_beams=5) for p in PROMPTS]
    s_leaf = torch.cat([s[0] for s in single])
    s_score = torch.cat([s[1] for s in single])
    for bs, cache in ((2, "auto"), (3, "dynamic"), (16, "shared")):
        leaf, score = constrained_beam_search(
            model, PROMPTS, trie, num_beams=5, batch_size=bs, kv_cache=cache
        )
        assert_same_ranking(leaf, score, s_leaf, s_score, tol=1e-5)


def test_prompt_runs_once_per_user_with_explicit_positions():
    calls = []

    def hook(module, args, kwargs):
        calls.append(
            (kwargs["input_ids"].shape, kwargs["position_ids"].clone(), kwargs["attention_mask"].clone())
        )

    handle = LLAMA.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        constrained_beam_search(LLAMA, PROMPTS[:3], _trie(CAT_A), num_beams=4, batch_size=3)
    finally:
        handle.remove()
    prompt_calls = [c for c in calls if c[0][1] > 1]
    assert len(prompt_calls) == 1 and prompt_calls[0][0] == (3, 9)  # one left-padded pass for 3 users
    _, pos, mask = prompt_calls[0]
    # Users are batched in prompt-length order: [30, 31], [20..24], [40..48].
    assert mask[0].tolist() == [0] * 7 + [1, 1] and mask[1].tolist() == [0] * 4 + [1] * 5
    assert pos[0, -2:].tolist() == [0, 1] and pos[1, -5:].tolist() == list(range(5))
    assert pos[2].tolist() == list(range(9))
    # Decoding steps: 3 users x 4 beams, one token each, positions continue each user's own prompt.
    shape, pos, mask = calls[1]
    assert shape == (12, 1) and pos[:, 0].tolist() == [2] * 4 + [5] * 4 + [9] * 4
    assert mask.shape == (12, 10)


# ---------------------------------------------------------------------------------------------- items
def test_leaves_to_items_expands_duplicates_deterministically():
    # Items 1, 4, 10 share [3, 4, 6]; weights 1, 3, 3 -> by weight: 4, 10 (tie -> smaller id first), 1.
    trie = _trie(CAT_A, [1, 1, 1, 3, 1, 1, 1, 1, 1, 3])
    dup = trie.leaf_of_item(1)
    one = trie.leaf_of_item(5)
    leaf_ids = torch.tensor([[dup, one, -1], [one, -1, -1]])
    assert leaves_to_items(trie, leaf_ids, k=5).tolist() == [[4, 10, 1, 5, -1], [5, -1, -1, -1, -1]]
    assert leaves_to_items(trie, leaf_ids, k=2, tie_break="id").tolist() == [[1, 4], [5, -1]]
    assert leaves_to_items(trie, leaf_ids).tolist() == [[4, 10, 1], [5, -1, -1]]
    with pytest.raises(ValueError, match="tie_break"):
        leaves_to_items(trie, leaf_ids, tie_break="random")


def test_bad_arguments_raise_clear_errors():
    trie = _trie(CAT_A)
    with pytest.raises(ValueError, match="num_beams"):
        constrained_beam_search(LLAMA, PROMPTS, trie, num_beams=0)
    with pytest.raises(ValueError, match="at least one token"):
        constrained_beam_search(LLAMA, [[]], trie)
    with pytest.raises(ValueError, match="kv_cache"):
        constrained_beam_search(LLAMA, PROMPTS, trie, kv_cache="paged")
    with pytest.raises(ValueError, match="early_stopping"):
        constrained_beam_search(LLAMA, PROMPTS, trie, early_stopping="sometimes")
    with pytest.raises(ValueError, match="gs"):
        constrained_beam_search(LLAMA, PROMPTS, trie, ensemble=torch.ones(5, 11), ensemble_weight=1.5)


# ---------------------------------------------------------------------------------------------- property
@st.composite
def decode_cases(draw):
    n = draw(st.integers(1, 12))
    seqs = []
    for _ in range(n):
        if seqs and draw(st.booleans()):
            base = draw(st.sampled_from(seqs))[:-1]
            base = base[: draw(st.integers(0, len(base)))]
        else:
            base = []
        seqs.append(base + draw(st.lists(st.integers(3, 12), min_size=0 if base else 1, max_size=3)) + [EOS])
    prompts = draw(st.lists(st.lists(st.integers(3, V - 1), min_size=1, max_size=6), min_size=1, max_size=3))
    return (
        seqs,
        prompts,
        draw(st.integers(1, 6)),
        draw(st.sampled_from([0.0, 1.0])),
        draw(st.sampled_from([0.0, 0.5])),
    )


@settings(max_examples=25, deadline=None)
@given(decode_cases())
def test_random_catalogues_give_valid_ranked_titles(case):
    seqs, prompts, k, lp, alpha = case
    trie = _trie(seqs)
    leaves, scores = constrained_beam_search(
        LLAMA, prompts, trie, num_beams=k, length_penalty=lp, ig_alpha=alpha, batch_size=2
    )
    assert leaves.shape == (len(prompts), k)
    check_valid(leaves, scores, trie, LLAMA, prompts, lp=lp, alpha=alpha, k=k if lp == 0.0 else None)


# ---------------------------------------------------------------------------------------------- vs generate()
CAT_ONE_TOKEN = [[t, EOS] for t in range(3, 15)]  # every title is a single token
CAT_DUPLICATES = [[3, 4, EOS], [3, 4, EOS], [6, EOS], [6, EOS], [6, EOS], [3, 7, 8, EOS], [3, 7, 8, EOS]]
CAT_DEEP = [[3, 4, 5, 6, 7, 8, EOS], [3, 4, 5, 6, 7, 9, EOS], [3, 4, 5, 10, EOS], [3, 11, EOS], [12, EOS]]
# Prompts sharing a 6-token "instruction" (the shared part runs once per batch), one of them short.
HEADER = [60, 61, 62, 63, 58, 59]
PROMPTS_HEADER = [HEADER + p for p in PROMPTS] + [HEADER[:3] + [33]]


@pytest.mark.parametrize(
    ("cat", "k"),
    [(CAT_A, 5), (CAT_ONE_TOKEN, 4), (CAT_DUPLICATES, 3), (CAT_DEEP, 5)],
    ids=["shared-prefixes", "one-token-titles", "duplicate-titles", "deep-chain"],
)
@pytest.mark.parametrize("batch_size", [1, 2, 6])
def test_equals_generate_for_catalogues_and_batch_sizes(cat, k, batch_size):
    trie = _trie(cat)
    ref = generate_reference(LLAMA, PROMPTS_HEADER, trie, num_beams=k)
    fast = constrained_beam_search(LLAMA, PROMPTS_HEADER, trie, num_beams=k, batch_size=batch_size)
    assert (fast[0] >= 0).any()
    assert_same_ranking(fast[0], fast[1], *ref)
    check_valid(*fast, trie, LLAMA, PROMPTS_HEADER, k=k)


@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
def test_kv_sharing_and_prefix_sharing_do_not_change_results(model_name):
    model, trie = MODELS[model_name], _trie(CAT_A)
    plain = constrained_beam_search(
        model, PROMPTS_HEADER, trie, num_beams=5, batch_size=3, kv_cache="dynamic", share_prompt_prefix=False
    )
    for cache in ("shared", "dynamic"):
        for share in (True, False):
            got = constrained_beam_search(
                model,
                PROMPTS_HEADER,
                trie,
                num_beams=5,
                batch_size=3,
                kv_cache=cache,
                share_prompt_prefix=share,
            )
            assert_same_ranking(got[0], got[1], *plain, tol=1e-5)


def test_shared_prefix_runs_once_and_prompt_kv_is_stored_once_per_user(monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls, seen = [], []

    def hook(module, args, kwargs):
        calls.append((tuple(kwargs["input_ids"].shape), kwargs.get("attention_mask")))

    inner = ALL_ATTENTION_FUNCTIONS[kv_cache.SHARED_PROMPT_ATTENTION]

    def spy(module, query, key, value, mask, **kwargs):
        ctx = kwargs.get("shared_prompt")
        if ctx is not None:
            layer = ctx.layers[module.layer_idx]
            seen.append((query.shape[0], layer.prompt_keys.shape[0], key.shape[0]))
        return inner(module, query, key, value, mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, kv_cache.SHARED_PROMPT_ATTENTION, spy)
    prompts = [HEADER + p for p in PROMPTS[:3]]
    handle = LLAMA.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        constrained_beam_search(LLAMA, prompts, _trie(CAT_A), num_beams=4, batch_size=3)
    finally:
        handle.remove()
    # The 6 shared tokens run once (one row, no padding), then each user's own tokens, left padded.
    assert calls[0][0] == (1, 6) and calls[0][1] is None
    assert calls[1][0] == (3, 9) and calls[1][1].shape == (3, 15)
    assert calls[1][1][:, :6].all() and calls[1][1][0].tolist() == [1] * 6 + [0] * 7 + [1, 1]
    # Decoding steps go through the shared-prompt attention: 12 beam rows, but the prompt KV has 3 rows
    # (later fewer, once finished users are dropped: always 4 beam rows per prompt row).
    assert seen and seen[0] == (12, 3, 12) and all(q == 4 * p and g == q for q, p, g in seen)
    assert LLAMA.config._attn_implementation == "sdpa"  # restored after decoding


def test_cetrec_embed_fn_with_shared_prefix_equals_unshared():
    trie = _trie(CAT_A)
    emb = LLAMA.get_input_embeddings()

    def embed_fn(ids, index):  # adds a per-item vector, like CETRec's temporal embeddings
        return emb(ids) + 0.3 * (index >= 0)[..., None] * torch.sin(index.clamp_min(0)[..., None] + 1.0)

    prompts = [HEADER + p for p in PROMPTS[:4]]
    index = [[-1] * 6 + [i % 3] * len(p) for i, p in enumerate(PROMPTS[:4])]
    kw = dict(num_beams=4, batch_size=4, prompt_item_index=index, embed_fn=embed_fn)
    shared = constrained_beam_search(LLAMA, prompts, trie, **kw)
    plain = constrained_beam_search(LLAMA, prompts, trie, share_prompt_prefix=False, kv_cache="dynamic", **kw)
    assert_same_ranking(shared[0], shared[1], *plain, tol=1e-5)
    without = constrained_beam_search(LLAMA, prompts, trie, num_beams=4, batch_size=4)
    assert not torch.allclose(without[1], shared[1])  # the embeddings were used


@settings(max_examples=15, deadline=None)
@given(decode_cases(), st.integers(1, 3), st.booleans())
def test_random_catalogues_equal_generate(case, batch_size, header):
    seqs, prompts, k, lp, _ = case
    trie = _trie(seqs)
    k = max(k, 2)  # generate() runs greedy search for one beam
    prompts = [HEADER + p for p in prompts] if header else prompts
    ref = generate_reference(LLAMA, prompts, trie, num_beams=k, length_penalty=lp)
    fast = constrained_beam_search(
        LLAMA, prompts, trie, num_beams=k, length_penalty=lp, batch_size=batch_size
    )
    assert_same_ranking(fast[0], fast[1], *ref)


def test_fill_by_popularity_is_deterministic_and_skips_present_items():
    order = torch.tensor([4, 2, 9, 1])  # most popular first
    ranked = torch.tensor([[2, -1, -1], [7, 8, 1], [-1, -1, -1]])
    assert fill_by_popularity(ranked, order).tolist() == [[2, 4, 9], [7, 8, 1], [4, 2, 9]]


@pytest.mark.parametrize("frozen", [False, True])
def test_weights_cast_once_under_autocast_gives_bit_identical_lists(frozen):
    """The search under bf16 autocast with the linear weights cast once equals autocast's own per-call casts
    exactly (same rounding); frozen weights (LoRA's base layers) are where autocast re-casts at every step."""
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)).eval()
    model.requires_grad_(not frozen)
    trie = _trie(CAT_A)
    before = {name: p for name, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow = constrained_beam_search(
            model, PROMPTS, trie, num_beams=5, batch_size=2, cast_weights_once=False
        )
        fast = constrained_beam_search(model, PROMPTS, trie, num_beams=5, batch_size=2)
    assert torch.equal(slow[0], fast[0]) and torch.equal(slow[1], fast[1])
    after = dict(model.named_parameters())
    assert all(after[n] is p and p.dtype == torch.float32 for n, p in before.items())  # put back, fp32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def test_weights_cast_once_casts_each_linear_once_and_leaves_the_embedding_fp32():
    from recbole_llm.model.decoding.weights import linear_weights_cast_once

    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)).eval()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with linear_weights_cast_once(model, "cpu") as swapped:
        assert swapped == 0  # autocast off: nothing to do
    with torch.autocast("cpu", dtype=torch.bfloat16), linear_weights_cast_once(model, "cpu") as swapped:
        assert swapped == n_linear
        assert model.lm_head.weight.dtype == torch.bfloat16
        assert model.model.embed_tokens.weight.dtype == torch.float32
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32
