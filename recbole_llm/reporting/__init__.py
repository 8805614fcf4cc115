"""Reporting on finished runs: reading results JSONs, comparison tables and their plots.

The papers' analyses (popularity groups, reversed histories, IG statistics) live in
:mod:`recbole_llm.analysis`, one floor up; this package never reloads a model, so it stays light.

    python -m recbole_llm.analysis compare results/ml-100k --base SASRec
"""
