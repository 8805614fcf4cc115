"""Prompt templates: the strings of the papers' prompts (D3/IGD and CFT Table 1) and the category words.

``PromptTemplate`` holds the strings a prompt is made of; ``recbole_llm/model/prompt.py`` tokenises them into
cached pieces (docs/design.md §2). ``prompt_template`` picks a built-in (``d3``, ``igd``, ``cft``) or
``custom``, and any ``prompt_*`` key overrides one string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from recbole_llm.utils.config_access import config_get

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n"
)


@dataclass(frozen=True)
class Category:
    """Words naming the catalogue's items in the prompt, e.g. game / games / played."""

    singular: str = "item"
    plural: str = "items"
    verb: str = "interacted with"

    @classmethod
    def from_any(cls, value: Any) -> Category:
        """Accept a Category, a mapping {singular, plural[, verb]}, one word (used for both), or None."""
        if value is None:
            return cls()
        if isinstance(value, Category):
            return value
        if isinstance(value, str):
            return cls(singular=value, plural=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"singular", "plural", "verb"}
            if unknown:
                raise ValueError(f"category has unknown keys {sorted(unknown)}: use singular, plural, verb")
            singular = str(value.get("singular") or value.get("plural") or "item")
            plural = str(value.get("plural") or f"{singular}s")
            return cls(singular=singular, plural=plural, verb=str(value.get("verb") or cls.verb))
        raise TypeError(
            f"category must be a mapping {{singular, plural}} or a word, not {type(value).__name__}"
        )


@dataclass(frozen=True)
class PromptTemplate:
    """Prompt strings; ``{singular} {plural} {verb} {max_history} {max_history_words}`` are filled in
    the fixed pieces and ``{title}`` in ``item_format`` / ``target_format``."""

    name: str
    preamble: str
    preamble_no_input: str
    instruction: str
    input_header: str
    history_lead: str
    item_format: str
    item_separator: str
    response_header: str
    target_format: str

    CONFIG_KEYS = {
        "prompt_preamble": "preamble",
        "prompt_preamble_no_input": "preamble_no_input",
        "prompt_instruction": "instruction",
        "prompt_input_header": "input_header",
        "prompt_history_lead": "history_lead",
        "prompt_item_format": "item_format",
        "prompt_item_separator": "item_separator",
        "prompt_response_header": "response_header",
        "prompt_target_format": "target_format",
    }

    def __post_init__(self) -> None:
        for name in ("item_format", "target_format"):
            if "{title}" not in getattr(self, name):
                key = next(k for k, v in self.CONFIG_KEYS.items() if v == name)
                raise ValueError(f"{key}={getattr(self, name)!r} must contain '{{title}}'")

    @classmethod
    def builtin(cls, name: str) -> PromptTemplate:
        name = str(name).lower()
        if name not in BUILTIN_TEMPLATES:
            raise ValueError(
                f"prompt_template={name!r} is unknown: use one of {', '.join(BUILTIN_TEMPLATES)} or 'custom' "
                f"(custom starts from d3 and takes {', '.join(cls.CONFIG_KEYS)})"
            )
        return BUILTIN_TEMPLATES[name]

    @classmethod
    def from_config(cls, config: Any) -> PromptTemplate:
        """``prompt_template`` (d3 | igd | cft | custom = d3) with any ``prompt_*`` key overriding a string."""
        name = str(config_get(config, "prompt_template", "d3")).lower()
        base = cls.builtin("d3" if name == "custom" else name)
        overrides = {
            f: str(config_get(config, k))
            for k, f in cls.CONFIG_KEYS.items()
            if config_get(config, k) is not None
        }
        return replace(base, name=name, **overrides) if overrides or name == "custom" else base


_D3 = PromptTemplate(
    name="d3",
    preamble=ALPACA_INPUT,
    preamble_no_input=ALPACA_NO_INPUT,
    instruction="Given a list of {plural} the user recently enjoyed, please write a new {singular} that the user may buy",
    input_header="\n\n### User Input:\nThe user has {verb} the following {plural} before:",
    history_lead=" ",
    item_format='"{title}"',
    item_separator=", ",
    response_header='\n\n### Response:\n"',
    target_format='{title}"\n',
)
BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {
    "d3": _D3,
    # IGD's code is D3's without the quotes around titles.
    "igd": replace(
        _D3,
        name="igd",
        item_format="{title}",
        response_header="\n\n### Response:\n",
        target_format="{title}\n",
    ),
    # CFT paper, Table 1 (BIGRec's Alpaca template; "ten" becomes the configured history length).
    "cft": replace(
        _D3,
        name="cft",
        instruction=(
            "Given {max_history_words} {plural} that the user {verb} recently, please recommend a new "
            "{singular} that the user likes to the user."
        ),
        input_header="\n\n### Input:\nThe user has {verb} the following {plural} before:",
    ),
}
