"""Reporting on finished runs: reading results JSONs, comparison tables and their plots.

The papers' analyses (popularity groups, reversed histories, IG statistics) live in
:mod:`recbole_llm.analysis`, one floor up: this package reads results JSONs and never reloads a model.

    python -m recbole_llm.analysis compare results/ml-100k --base SASRec
"""
