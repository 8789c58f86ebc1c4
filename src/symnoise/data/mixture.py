"""Training data made of one or several sources: ``data.path`` alone, or a mixture ``data.datasets``.

Each source is read, checked, tokenised and reported on its own (`prepare_dataset`), with its own format and
template. A mixture then takes every example of each source ``weight`` times: weight 2 repeats a source twice, 0.5
keeps a random half of it (drawn with the training seed, so runs are repeatable), 1 (the default) keeps it as it
is; ``limit`` keeps the first N records instead. The order across sources is left to the trainer's shuffling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .prepare import DatasetReport, DatasetSpec, prepare_dataset
from .readers import DataError
from .store import TokenizedDataset


class MixedDataset(Sequence):
    """Examples of several tokenised datasets, each repeated or subsampled by its weight."""

    def __init__(self, parts: list[TokenizedDataset], selections: list[np.ndarray]):
        self.parts = parts
        self.part_of = np.concatenate([np.full(len(s), k, dtype=np.int32) for k, s in enumerate(selections)])
        self.index_in = np.concatenate(selections).astype(np.int64)
        self.max_length = max(part.max_length for part in parts)

    def __len__(self) -> int:
        return len(self.index_in)

    def __getitem__(self, index):
        return self.parts[int(self.part_of[index])][int(self.index_in[index])]

    @property
    def lengths(self) -> list[int]:
        per_part = [np.diff(part.offsets) for part in self.parts]
        return [
            int(per_part[p][i]) for p, i in zip(self.part_of.tolist(), self.index_in.tolist(), strict=True)
        ]

    @property
    def sources(self) -> list[str]:
        per_part = [part.sources for part in self.parts]
        return [per_part[p][i] for p, i in zip(self.part_of.tolist(), self.index_in.tolist(), strict=True)]

    @property
    def n_truncated(self) -> int:
        return sum(part.n_truncated for part in self.parts)

    @property
    def n_dropped(self) -> int:
        return sum(part.n_dropped for part in self.parts)

    def summary(self) -> str:
        return (
            f"{len(self)} examples from {len(self.parts)} datasets, {self.n_truncated} truncated to "
            f"{self.max_length} tokens"
        )


def weighted_count(size: int, weight: float | None) -> int:
    """How many examples a source of `size` examples gives at `weight` (None: 1): whole copies, then a rounded
    remainder."""
    weight = 1.0 if weight is None else weight
    return int(weight) * size + round((weight - int(weight)) * size)


def weighted_selection(size: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a dataset of `size` examples taken `weight` times: whole copies, then a random remainder."""
    whole = int(weight)
    extra = weighted_count(size, weight) - whole * size
    chosen = [np.arange(size)] * whole
    if extra:
        chosen.append(np.sort(rng.choice(size, size=extra, replace=False)))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


@dataclass
class TrainingData:
    """The train (and eval) datasets of a run, with the per-source reports."""

    train: TokenizedDataset | MixedDataset
    reports: list[DatasetReport]
    eval: TokenizedDataset | None = None
    eval_report: DatasetReport | None = None
    selected: list[int] = field(default_factory=list)

    @property
    def template(self) -> str:
        """The template of the first source: what `symnoise generate` renders prompts with."""
        return self.reports[0].template

    @property
    def format(self) -> str:
        return self.reports[0].load.format

    @property
    def from_cache(self) -> bool:
        """Whether every source (and the eval set) was opened from the tokenised-data cache."""
        reports = [*self.reports, *([self.eval_report] if self.eval_report is not None else [])]
        return all(report.cached for report in reports)

    def summary_lines(self) -> list[str]:
        lines = [f"data: {report.summary()}" for report in self.reports]
        if len(self.reports) > 1:
            lines.append(
                "mixture: "
                + ", ".join(
                    f"{count} examples of {report.load.source}"
                    for count, report in zip(self.selected, self.reports, strict=True)
                )
            )
            templates = sorted({report.template for report in self.reports})
            if len(templates) > 1:
                lines.append(
                    f"note: the mixture uses several templates ({', '.join(templates)}); "
                    f"symnoise generate will prompt with {self.template}, the first dataset's"
                )
        if self.eval_report is not None:
            lines.append(f"eval data: {self.eval_report.summary()}")
        return lines

    def to_dict(self) -> dict:
        """data_report.json: the first source's fields at the top level (as before mixtures), every source under
        ``datasets``, and the mixture's size."""
        first = self.reports[0].to_dict()
        return {
            **first,
            "max_length": self.train.max_length,
            "examples": len(self.train),
            "datasets": [
                {**report.to_dict(), "selected": count}
                for report, count in zip(self.reports, self.selected, strict=True)
            ],
            "eval": self.eval_report.to_dict() if self.eval_report else None,
        }


def prepare_training_data(
    specs: list[DatasetSpec],
    tokenizer,
    max_length: int,
    seed: int,
    eval_spec: DatasetSpec | None = None,
    cache: bool = True,
) -> TrainingData:
    """Every source prepared and reported on its own, then mixed by weight; the eval source, if any, too."""
    datasets, reports = [], []
    for spec in specs:
        dataset, report = prepare_dataset(spec, tokenizer, max_length, cache)
        datasets.append(dataset)
        reports.append(report)
    rng = np.random.default_rng(seed)
    if len(specs) == 1 and specs[0].weight in (None, 1):
        train: TokenizedDataset | MixedDataset = datasets[0]
        selected = [len(datasets[0])]
    else:
        selections = [
            weighted_selection(len(d), 1.0 if s.weight is None else s.weight, rng)
            for d, s in zip(datasets, specs, strict=True)
        ]
        train = MixedDataset(datasets, selections)
        selected = [len(s) for s in selections]
    data = TrainingData(train, reports, selected=selected)
    if not len(train):
        raise DataError("the mixture selects no example: raise the weights")
    if eval_spec is not None:
        if eval_spec.template is None:
            eval_spec = replace(eval_spec, template=data.template)
        data.eval, data.eval_report = prepare_dataset(eval_spec, tokenizer, max_length, cache)
    return data


# What a ``datasets`` entry leaves unset falls back on the section's value.
ENTRY_FALLBACKS = ("format", "template", "split", "turns")


def specs_from_section(section) -> tuple[list[DatasetSpec], DatasetSpec | None]:
    """The sources a ``data`` config section names (``path`` or ``datasets``, entries falling back on the section's
    format, template, split and turns), and its eval source."""
    shared = {key: getattr(section, key) for key in (*ENTRY_FALLBACKS, "on_bad_row")}
    if section.datasets is None:
        specs = [DatasetSpec(path=section.path, limit=section.limit, **shared)]
    else:
        specs = [
            DatasetSpec(
                path=entry.path,
                limit=entry.limit,
                weight=entry.weight,
                on_bad_row=section.on_bad_row,
                **{
                    key: getattr(entry, key) if getattr(entry, key) is not None else shared[key]
                    for key in ENTRY_FALLBACKS
                },
            )
            for entry in section.datasets
        ]
    eval_spec = None
    if section.eval_path:
        eval_format = specs[0].format if len(specs) == 1 else "auto"
        eval_spec = DatasetSpec(
            path=section.eval_path,
            format=eval_format,
            template=section.template,
            turns=section.turns,
            on_bad_row=section.on_bad_row,
        )
    return specs, eval_spec
