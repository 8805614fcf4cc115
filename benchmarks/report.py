"""Turn a benchmark result into the printed table, the Markdown table of the README, and pass/fail flags."""

from __future__ import annotations

from typing import Any

from benchmarks import TARGETS

_LABELS = {
    "decoder_speedup": "decoder: ours vs generate() + prefix_allowed_tokens_fn (users/s)",
    "step_ratio.pos": "training step pos / sft",
    "step_ratio.cft": "training step cft / sft",
    "step_ratio.cetrec": "training step cetrec / sft",
    "step_ratio.igd": "training step igd / sft",
    "padding_share": "padding tokens in training micro-batches",
    "trie_build_seconds": "trie + IG tables, {items} titles: time",
    "trie_build_peak_mb": "trie + IG tables, {items} titles: peak memory",
    "full_split_minutes": "full ml-100k test split (9,834 users), projected wall clock",
}


def lookup(result: dict[str, Any], key: str) -> float | None:
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return float(value)


def passes(key: str, value: float | None) -> bool | None:
    if value is None:
        return None
    kind, bound = TARGETS[key]
    return value >= bound if kind == "min" else value <= bound if kind == "max" else value < bound


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "not run"
    if key == "decoder_speedup":
        return f"{value:.2f}x"
    if key.startswith("step_ratio"):
        return f"{value:.3f}x"
    if key == "padding_share":
        return f"{100 * value:.2f}%"
    if key == "trie_build_seconds":
        return f"{value:.2f} s"
    if key == "full_split_minutes":
        return f"{value:.1f} min"
    return f"{value:.0f} MB"


def _target(key: str) -> str:
    kind, bound = TARGETS[key]
    sign = {"min": ">=", "max": "<=", "lt": "<"}[kind]
    if key == "decoder_speedup" or key.startswith("step_ratio"):
        return f"{sign} {bound:g}x"
    if key == "padding_share":
        return f"{sign} {100 * bound:g}%"
    if key == "trie_build_seconds":
        return f"{sign} {bound:g} s"
    if key == "full_split_minutes":
        return f"{sign} {bound:g} min"
    return f"{sign} {bound / 1024:g} GB"


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    items = result.get("settings", {}).get("trie_items")
    for key in TARGETS:
        value = lookup(result, key)
        ok = passes(key, value)
        label = _LABELS[key].format(items=f"{items:,}" if items else "?")
        out.append((label, _fmt(key, value), _target(key), "-" if ok is None else "yes" if ok else "NO"))
    return out


def text_table(result: dict[str, Any]) -> str:
    header = ("measurement", "measured", "target", "met")
    table = [header, *rows(result)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| measurement | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(result)]
    return "\n".join(lines)


def details(result: dict[str, Any]) -> str:
    """The numbers behind the ratios, one line each."""
    out = []
    dec = result.get("decoder")
    if dec:
        ident = dec["identical"]
        out.append(
            f"decoder ({dec['clock']}): {dec['users']} users, {dec['num_beams']} beams, batch "
            f"{dec['batch_size']}: ours "
            f"{dec['ours_users_per_s']:.3f} users/s, generate() {dec['reference_users_per_s']:.3f} users/s; "
            f"outputs identical: {ident['identical']} ({ident['users_same_order']} same order, "
            f"{ident['users_tie_swaps']} tie swaps, max |score diff| {ident['max_score_diff']:.2g})"
        )
    tr = result.get("training")
    if tr:
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in tr["step_seconds"].items())
        tok = tr["tokens_per_micro_batch"]
        cf = ""
        if "cft_counterfactual" in tok:
            cf = f", CFT counterfactual {tok['cft_counterfactual']:.0f}"
            if "cft_counterfactual_run" in tok:
                cf += f" of which {tok['cft_counterfactual_run']:.0f} run (the instruction is reused)"
        out.append(
            f"training: micro-batch {tr['micro_batch']}, median of {tr['repetitions']} rounds ({tr['clock']}): "
            f"{secs}; padded tokens per micro-batch: factual {tok['factual']:.0f}{cf}"
        )
    pad = result.get("padding")
    if pad:
        out.append(
            f"padding: {pad['samples']} samples, batches {pad['batch_size']}/{pad['micro_batch_size']}: "
            f"{100 * pad['padding_share']:.2f}% length-grouped vs {100 * pad['padding_share_unsorted']:.2f}% "
            f"unsorted; CFT counterfactual {100 * pad['padding_share_cft_counterfactual']:.2f}%"
        )
    trie = result.get("trie")
    if trie:
        out.append(
            f"trie: {trie['items']} items, {trie['titles']} titles, {trie['nodes']} nodes, mean "
            f"{trie['mean_tokens']:.1f} / max {trie['max_tokens']} tokens; tracemalloc peak "
            f"{trie['tracemalloc_peak_mb']:.0f} MB"
        )
    full = result.get("full_split")
    if full:
        ups, fl, same = full["users_per_s"], full["floor"], full["fp32_fast_equals_today"]
        ref = f", generate() {ups['generate']:.2f}" if "generate" in ups else ""
        if "processes" in ups:
            ref += f", {full['processes']['processes']} processes x 1 thread {ups['processes']:.2f}"
        out.append(
            f"full split ({full['precision']}, {full['threads']} threads, wall clock): {full['users']} users; "
            f"users/s: today (batch {full['batch']['today']}) {ups['today']:.2f}, fast (batch "
            f"{full['batch']['fast']}) {ups['fast']:.2f}{ref}; projected 9,834 users: "
            f"{full['projected_full_split_minutes'][full['best_path']]:.1f} min ({full['best_path']}); floor {fl['floor_full_split_minutes']:.1f} min "
            f"({fl['gflop_per_user']:.0f} GFLOP/user at {fl['matmul_gflops']:.0f} GFLOP/s; fast runs at "
            f"{100 * fl['fast_share_of_floor']:.0f} % of it); fp32 rankings fast = today: {same['identical']}"
        )
    out.append(
        f"load average (1/5/15 min) at start {result.get('load_average', {}).get('start')}, "
        f"end {result.get('load_average', {}).get('end')}"
    )
    return "\n".join(out)
