"""Document processing for the local HellaSwag task (referenced from ``hellaswag.yaml`` with ``!function``).

The harness builds each HellaSwag query from the original fields as
``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``. The local text file only has the line
``activity_label: ctx`` with ``ctx = ctx_a + " " + ctx_b`` (WikiHow markup already removed), so ``ctx_b`` is
recovered as the text after the last ". " and capitalized when it starts with a lower-case letter. That is exact for
the usual ActivityNet item ("... on a roof. he" -> "... on a roof. He") and leaves WikiHow items, whose ``ctx_b`` is
empty, unchanged; rare items whose context does not end in a full stop before ``ctx_b`` stay uncapitalized.
"""

from __future__ import annotations

import re
from typing import Any

_MARKUP = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """The harness's HellaSwag clean-up: WikiHow ``[title]`` becomes a sentence break, other ``[...]`` tags go."""
    text = text.strip().replace(" [title]", ". ")
    return _MARKUP.sub("", text).replace("  ", " ")


def capitalize_continuation(ctx_line: str) -> str:
    """Capitalize the trailing sentence fragment (``ctx_b``) of an ``activity_label: ctx`` line, as the harness does.

    ``str.capitalize`` also lower-cases the rest of the fragment; the harness does the same, so it is kept.
    """
    cut = ctx_line.rfind(". ")
    start = cut + 2 if cut >= 0 else ctx_line.find(": ") + 2 if ": " in ctx_line else 0
    fragment = ctx_line[start:]
    if fragment[:1].islower():
        return ctx_line[:start] + fragment.capitalize()
    return ctx_line


def hellaswag_doc(row: dict[str, Any]) -> dict[str, Any]:
    """One local row ``{ctx, endings, label}`` -> the fields the task reads: query, choices, gold."""
    return {
        "query": preprocess(capitalize_continuation(row["ctx"])),
        "choices": [preprocess(ending) for ending in row["endings"]],
        "gold": int(row["label"]),
    }


def process_hellaswag_docs(dataset):
    """``process_docs`` hook: map every row of a ``datasets.Dataset`` through :func:`hellaswag_doc`."""
    return dataset.map(hellaswag_doc)
