"""The papers' analyses on finished runs (CSV + PNG each); comparison tables are :mod:`recbole_llm.reporting`.

    python -m recbole_llm.analysis compare results/ml-100k --base SASRec
    python -m recbole_llm.analysis popularity RESULTS.json [RESULTS.json ...]
    python -m recbole_llm.analysis temporal RESULTS.json [...]
    python -m recbole_llm.analysis ig-stats RESULTS.json [...]
    python -m recbole_llm.analysis zero-ig ml-100k ml-1m
    python -m recbole_llm.analysis ig-loss saved/LLMGenRec-ml-100k-.../ [...]

``common`` holds what they share; ``popularity`` (CFT Fig. 1/4), ``temporal`` (CETRec Fig. 4) and
``ig_stats`` (IGD Table 4, Fig. 1-3) one analysis each. This package file imports nothing, so that
``compare`` (results JSONs only) starts without loading a model stack.
"""
