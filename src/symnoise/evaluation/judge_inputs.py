"""What a judging run reads and writes per example: the model outputs and reference outputs, paired by instruction
into :class:`Example`\\ s, and the AlpacaEval annotation row each example ends as.

Everything that can be wrong with the inputs is found here, before the first request to a judge: a missing or
unreadable file, a row that is not an object or lacks a string ``instruction``/``output``, a model output whose
instruction has no reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symnoise.files import read_json_rows


class JudgeInputError(ValueError):
    """The outputs or reference file is unusable; raised before any judge request is sent. Also an example whose
    instruction does not fit the local judge's context (raised when that example's turn comes)."""


@dataclass(frozen=True)
class Example:
    """One instruction with the reference output (``output_1``) and the model output (``output_2``) to compare."""

    instruction: str
    reference: str
    output: str
    generator_reference: str
    generator_model: str
    dataset: str

    def annotation(
        self,
        judge_id: str,
        annotator: str,
        preference: float | None,
        model_first: bool | None,
        raw_completion: str | dict | None,
        null_reason: str | None,
        prompt_truncated: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """This example as an AlpacaEval annotation; ``model_shown_first``: the model output was shown first
        (null: no request); ``prompt_truncated``: null, or how the outputs were cut to fit the judge's context
        (``[before, after]`` token counts of the prompt, ``output_1`` (reference) and ``output_2`` (model))."""
        return {
            "instruction": self.instruction,
            "output_1": self.reference,
            "generator_1": self.generator_reference,
            "dataset": self.dataset,
            "output_2": self.output,
            "generator_2": self.generator_model,
            "annotator": annotator,
            "judge": judge_id,
            "preference": preference,
            "model_shown_first": model_first,
            "raw_completion": raw_completion,
            "null_reason": null_reason,
            "prompt_truncated": prompt_truncated,
        }


def load_records(
    path: str | os.PathLike[str], required: Sequence[str] = ("instruction", "output")
) -> list[dict]:
    """Read a JSON list or a JSONL file of objects, checking that every row has string ``required`` fields."""
    path = Path(path)
    if not path.is_file():  # a folder too: "file not found" rather than the reader's "cannot be read"
        raise JudgeInputError(f"{path}: file not found")
    rows = read_json_rows(path, error=JudgeInputError)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise JudgeInputError(f"{path}: row {index} is {type(row).__name__}, expected an object")
        for name in required:
            if name not in row:
                raise JudgeInputError(f"{path}: row {index} has no field {name!r}")
            if not isinstance(row[name], str):
                raise JudgeInputError(
                    f"{path}: row {index} field {name!r} is {type(row[name]).__name__}, expected a string"
                )
    return rows


def pair_with_references(
    outputs: list[dict],
    references: list[dict],
    outputs_path: str | os.PathLike[str],
    default_generator: str = "model",
) -> list[Example]:
    """Match each model output to the reference with the same instruction; a missing reference is an error."""
    by_instruction = {row["instruction"]: row for row in references}
    examples = []
    for index, row in enumerate(outputs):
        ref = by_instruction.get(row["instruction"])
        if ref is None:
            raise JudgeInputError(
                f"{outputs_path}: row {index} has an instruction with no reference output: "
                f"{shorten(row['instruction'])!r}"
            )
        examples.append(
            Example(
                instruction=row["instruction"],
                reference=ref["output"],
                output=row["output"],
                generator_reference=str(ref.get("generator", "reference")),
                generator_model=str(row.get("generator", default_generator)),
                dataset=str(row.get("dataset", ref.get("dataset", ""))),
            )
        )
    return examples


def load_examples(
    outputs_path: str | os.PathLike[str], reference: str | os.PathLike[str] | list[dict]
) -> list[Example]:
    """Load and validate the outputs and the references (a file, or rows already loaded) and pair them; everything
    that can be wrong is found here, before judging."""
    outputs = load_records(outputs_path)
    references = reference if isinstance(reference, list) else load_records(reference)
    return pair_with_references(outputs, references, outputs_path, default_generator=Path(outputs_path).stem)


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with ``...``, for quoting user data in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
