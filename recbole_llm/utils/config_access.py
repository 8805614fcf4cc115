"""The one way to read an optional key from a RecBole ``Config`` or a plain dict."""

from __future__ import annotations

import ast
from typing import Any


def config_get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]``, or ``default`` when the key is absent or None.

    RecBole's ``Config`` has no ``.get`` and raises no ``KeyError`` for unknown keys in every version, so
    this works for it, for dicts and for ``None`` (no config at all).
    """
    if config is None:
        return default
    value = config[key] if key in config else None  # noqa: SIM401 (RecBole's Config has no .get)
    return default if value is None else value


def as_number(value: Any, key: str, hint: str) -> float:
    """``float(value)`` for a config key, or a clear error naming the key (booleans are refused: YAML's
    ``true`` would otherwise silently become 1.0)."""
    if isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be a number, not a boolean ({hint}).")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} must be a number ({hint}).") from None


def parse_value(text: str) -> Any:
    """Turn a ``--key=value`` string into a Python value without ``eval`` (RecBole uses ``eval``).

    ``None``, ``null`` and ``~`` are None; ``none`` stays the string ``'none'``, a value several keys take
    (``temporal_embedding=none``, ``fill=none``): read as None it silently meant the key's default.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.strip().lower()
        if lowered in {"true", "false"}:
            return lowered == "true"
        if lowered in {"null", "~"}:
            return None
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            stripped = stripped[1:-1]
        elif "," not in stripped:
            return text
        return [parse_value(part.strip()) for part in stripped.split(",") if part.strip()]


def check_exclude_history(value: Any) -> bool:
    """The one validation of ``exclude_history`` (every model): a boolean, ``~`` meaning off."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(
            f"exclude_history={value!r} must be True or False (True: never recommend an item of the sample's "
            "history, as CFT §4.1.2 and CETRec §5.1.2 evaluate; False: RecBole's sequential default)."
        )
    return value


def check_flag(key: str, value: Any, meaning: str) -> bool:
    """A True/False key (``~`` meaning off); ``meaning`` says what True does, for the error."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be True or False (True {meaning}).")
    return value


# LLMGenRec's trainer flags: key -> what True does (validated by Config, documented in LLMGenRec.yaml).
TRAINER_FLAGS = {
    "fsdp": "shards the LLM over the processes",
    "zero_shot": "evaluates the LLM as loaded, with no training step",
}


def check_fsdp(value: Any) -> bool:
    """The one validation of ``fsdp`` (LLMGenRec's trainer)."""
    return check_flag("fsdp", value, TRAINER_FLAGS["fsdp"])
