"""Document processing for the local HellaSwag task (referenced from ``hellaswag.yaml`` with ``!function``).

The harness builds each HellaSwag query from the hub fields as
``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, and :func:`hellaswag_doc` does exactly
that. Rows of the hub schema (e.g. a local copy of the train split) already carry those fields. The local validation
file only has the line ``activity_label: ctx`` with ``ctx = ctx_a + " " + ctx_b`` (WikiHow markup already
removed), so :func:`split_context` recovers them:

* WikiHow items (their ``activity_label`` is a WikiHow category, e.g. "Personal Care and Style") have an empty
  ``ctx_b``: nothing is capitalised, even where a sentence seems to start after an abbreviation ("u.s. nationals",
  "10 a.m. to 10 p.m.");
* ActivityNet items end with the fragment ``ctx_b`` after the last ". " ("... on a roof. he"), capitalised by the
  harness; a context whose last fragment does not start with a lower-case letter is taken as all ``ctx_a``.
"""

from __future__ import annotations

import re
from typing import Any

_MARKUP = re.compile(r"\[.*?\]")

# The activity labels of HellaSwag's WikiHow items: WikiHow's top-level categories (all 19 in the validation split).
WIKIHOW_CATEGORIES = frozenset(
    {
        "Arts and Entertainment",
        "Cars & Other Vehicles",
        "Computers and Electronics",
        "Education and Communications",
        "Family Life",
        "Finance and Business",
        "Food and Entertaining",
        "Health",
        "Hobbies and Crafts",
        "Holidays and Traditions",
        "Home and Garden",
        "Home,Categories",
        "Personal Care and Style",
        "Pets and Animals",
        "Philosophy and Religion",
        "Relationships",
        "Sports and Fitness",
        "Travel",
        "Uncategorized",
        "Work World",
        "Youth",
    }
)


def preprocess(text: str) -> str:
    """The harness's HellaSwag clean-up: WikiHow ``[title]`` becomes a sentence break, other ``[...]`` tags go."""
    text = text.strip().replace(" [title]", ". ")
    return _MARKUP.sub("", text).replace("  ", " ")


def split_context(ctx_line: str) -> tuple[str, str, str]:
    """``activity_label: ctx`` -> ``(activity_label, ctx_a, ctx_b)`` as in the hub dataset (see the module doc)."""
    label, sep, ctx = ctx_line.partition(": ")
    if not sep:
        label, ctx = "", ctx_line
    if label in WIKIHOW_CATEGORIES:
        return label, ctx, ""
    cut = ctx.rfind(". ")
    start = cut + 2 if cut >= 0 else 0
    fragment = ctx[start:]
    if not fragment[:1].islower():
        return label, ctx, ""
    return label, ctx[:start].rstrip(" "), fragment


def capitalize_continuation(ctx_line: str) -> str:
    """The ``activity_label: ctx`` line with ``ctx_b`` capitalised as the harness does (``str.capitalize`` also
    lower-cases the rest of the fragment; so does the harness)."""
    label, ctx_a, ctx_b = split_context(ctx_line)
    if not ctx_b:
        return ctx_line
    head = f"{label}: {ctx_a}" if label else ctx_a
    return f"{head} {ctx_b.capitalize()}" if ctx_a else f"{label}: {ctx_b.capitalize()}"


def hellaswag_doc(row: dict[str, Any]) -> dict[str, Any]:
    """One row -> the fields the task reads (query, choices, gold), by the harness's formula.

    Rows of the hub schema carry ``activity_label``, ``ctx_a``, ``ctx_b``; local rows ``{ctx, endings, label}``
    get them from :func:`split_context`.
    """
    if row.get("ctx_a") is not None and row.get("activity_label") is not None:
        label, ctx_a, ctx_b = row["activity_label"], row["ctx_a"], row.get("ctx_b") or ""
    else:
        label, ctx_a, ctx_b = split_context(row["ctx"])
    return {
        "query": preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()),
        "choices": [preprocess(ending) for ending in row["endings"]],
        "gold": int(row["label"]),
    }


def process_hellaswag_docs(dataset):
    """``process_docs`` hook: map every row of a ``datasets.Dataset`` through :func:`hellaswag_doc`."""
    return dataset.map(hellaswag_doc)
