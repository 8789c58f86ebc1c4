"""``symnoise train CONFIG --check``: read every data file as training would, without loading a model.

Every source (and the eval file) is opened and read to the end: its format detected, every row validated, rows
skipped and warnings counted, the first bad row named. With the model's tokenizer (no weights), the first few
records are rendered in their template and tokenised exactly as in training, to catch a template the tokenizer
cannot render (a missing chat template, a conversation the chat template refuses) and to show token counts.
Nothing is cached and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import islice

from .conversations import Conversation
from .formats import LoadReport, default_template, iter_records
from .prepare import DatasetSpec
from .tokenize import tokenize_examples

SAMPLE = 16


@dataclass
class SourceCheck:
    """What checking one source found."""

    spec: DatasetSpec
    report: LoadReport
    template: str
    sample: list = field(default_factory=list)  # the first records, kept for the tokeniser check

    def line(self) -> str:
        return f"{self.report.summary()}; template {self.template}"


def read_source(spec: DatasetSpec, sample: int = SAMPLE) -> SourceCheck:
    """Reads one source to the end as training would (a bad row raises a `DataError` naming it unless
    ``on_bad_row: skip``), keeping the first `sample` records."""
    report, records = iter_records(
        spec.path, spec.format, spec.on_bad_row, spec.split, spec.limit, spec.turns
    )
    kept = list(islice(records, sample))
    for _ in records:
        pass
    template = spec.template or default_template(
        report.format, conversational=isinstance(kept[0], Conversation)
    )
    return SourceCheck(spec, report, template, kept)


def check_sources(
    specs: list[DatasetSpec], eval_spec: DatasetSpec | None, tokenizer, max_length: int
) -> Iterator[str]:
    """Checks every source and yields one report line per finding; raises `DataError` on the first problem
    training would stop on. `tokenizer` None checks reading only."""
    checks = [read_source(spec) for spec in specs]
    if eval_spec is not None:
        eval_spec = eval_spec if eval_spec.template else replace(eval_spec, template=checks[0].template)
        checks.append(read_source(eval_spec))
    for position, check in enumerate(checks):
        label = "eval" if eval_spec is not None and position == len(checks) - 1 else f"data[{position}]"
        yield f"{label}: {check.line()}"
        if check.report.first_bad:
            yield f"{label}: first bad row: {check.report.first_bad}"
        if tokenizer is None:
            continue
        dataset = tokenize_examples(check.sample, tokenizer, check.template, max_length)
        lengths = dataset.lengths
        yield (
            f"{label}: rendered and tokenised the first {len(check.sample)} records: {len(dataset)} examples, "
            f"{min(lengths)}-{max(lengths)} tokens, {dataset.stats.turns_trained} assistant turns trained, "
            f"{dataset.n_truncated} truncated to {max_length}, {dataset.n_dropped} dropped"
        )
