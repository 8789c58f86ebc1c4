"""Tokenised data in flat numpy arrays on disk, memory-mapped: a few bytes per token instead of Python lists.

Layout of a store directory::

    ids.bin        every example's token ids back to back (uint16 when the vocabulary fits, else int32)
    offsets.npy    int64, example i is ids[offsets[i]:offsets[i + 1]]
    spans.npy      int32 pairs [start, end): the trained token ranges (responses and their end token), per example
    span_offsets.npy  int64, example i owns spans[span_offsets[i]:span_offsets[i + 1]]
    sources.txt    one line per example: where it came from ("train.json:row 12"), read only when asked
    meta.json      dtype, max length, counts

Python ``int`` lists cost about 36 bytes per token; these arrays cost 2 (or 4). Items are rebuilt on access as
the lists the collators take (``input_ids``, ``labels`` with -100 outside the trained ranges, ``attention_mask``).
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..files import read_json, write_text_atomic

IGNORE_INDEX = -100
META_FILE = "meta.json"


@dataclass
class TokenStats:
    """What tokenising cut and dropped: the examples that lost the end of a trained turn to ``max_length``, the
    assistant turns trained and truncated, and where each dropped example came from. The kept examples and their
    tokens are not counted here: the store's offsets hold them (`TokenizedDataset.__len__`, ``n_tokens``)."""

    n_truncated: int = 0
    turns_trained: int = 0
    turns_truncated: int = 0
    dropped_sources: list[str] = field(default_factory=list)


class TokenizedDataset(Sequence):
    """Tokenised examples as a map-style dataset (works with `torch.utils.data.DataLoader`).

    Each item is {"input_ids", "labels", "attention_mask"}, lists of ints without padding.
    `n_truncated` examples lost the end of a trained turn to `max_length`; `n_dropped` were removed because
    nothing trainable was left within `max_length` (the prompt alone reaches it); `dropped_sources` says which.
    """

    def __init__(
        self,
        directory: Path,
        ids: np.ndarray,
        offsets: np.ndarray,
        spans: np.ndarray,
        span_offsets: np.ndarray,
        max_length: int,
        stats: TokenStats,
    ):
        self.directory = directory
        self.ids, self.offsets, self.spans, self.span_offsets = ids, offsets, spans, span_offsets
        self.max_length = max_length
        self.stats = stats

    @classmethod
    def open(cls, directory: Path) -> TokenizedDataset:
        """A store written by `TokenWriter`, memory-mapped (nothing is read until used)."""
        meta = read_meta(directory)
        load = lambda name: np.load(directory / name, mmap_mode="r")  # noqa: E731
        offsets = load("offsets.npy")
        n_ids = int(offsets[-1])
        ids = (
            np.memmap(directory / "ids.bin", dtype=meta["dtype"], mode="r", shape=(n_ids,))
            if n_ids
            else np.zeros(0, dtype=meta["dtype"])
        )
        return cls(
            directory,
            ids,
            offsets,
            load("spans.npy"),
            load("span_offsets.npy"),
            meta["max_length"],
            TokenStats(**meta["stats"]),
        )

    @property
    def n_truncated(self) -> int:
        return self.stats.n_truncated

    @property
    def n_tokens(self) -> int:
        """Tokens of all examples together."""
        return int(self.offsets[-1])

    @property
    def dropped_sources(self) -> tuple[str, ...]:
        return tuple(self.stats.dropped_sources)

    @property
    def n_dropped(self) -> int:
        return len(self.stats.dropped_sources)

    @property
    def lengths(self) -> list[int]:
        """Number of tokens of each example, for length-grouped batching and token counts."""
        return np.diff(self.offsets).tolist()

    @property
    def sources(self) -> list[str]:
        """Where each example came from ("train.json:row 12"), in dataset order."""
        return (self.directory / "sources.txt").read_text(encoding="utf-8").split("\n")[: len(self)]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        index %= len(self)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        input_ids = self.ids[start:end].tolist()
        labels = [IGNORE_INDEX] * len(input_ids)
        for first, last in self.spans[self.span_offsets[index] : self.span_offsets[index + 1]].tolist():
            labels[first:last] = input_ids[first:last]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

    def summary(self) -> str:
        """'5000 examples, 37 truncated to 512 tokens' (plus the dropped ones, if any)."""
        line = f"{len(self)} examples, {self.n_truncated} truncated to {self.max_length} tokens"
        if self.n_dropped:
            line += f", {self.n_dropped} dropped (prompt alone reaches {self.max_length} tokens)"
        return line


class TokenWriter:
    """Appends tokenised examples to a store directory; `finish` writes the index and opens the store."""

    def __init__(self, directory: Path, vocab_size: int, max_length: int):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.dtype = "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"
        self.max_length = max_length
        self.stats = TokenStats()
        self._ids = (directory / "ids.bin").open("wb")
        self._sources = (directory / "sources.txt").open("w", encoding="utf-8")
        self._offsets = array("q", [0])
        self._spans = array("i")
        self._span_offsets = array("q", [0])
        self._buffer = array("H" if self.dtype == "uint16" else "i")

    def add(self, ids: list[int], spans: list[tuple[int, int]], source: str) -> None:
        """One example: its full token ids and trained ranges, cut here to `max_length`."""
        stats = self.stats
        kept_ids = ids[: self.max_length]
        kept = [(start, min(end, self.max_length)) for start, end in spans if start < self.max_length]
        cut = sum(end > self.max_length for _, end in spans)
        if not kept:
            stats.turns_truncated += cut
            stats.dropped_sources.append(source)
            return
        stats.turns_trained += len(kept)
        stats.turns_truncated += cut
        stats.n_truncated += cut > 0
        self._buffer.extend(kept_ids)
        self._offsets.append(self._offsets[-1] + len(kept_ids))
        for start, end in kept:
            self._spans.extend((start, end))
        self._span_offsets.append(self._span_offsets[-1] + len(kept))
        self._sources.write(source.replace("\n", " ") + "\n")
        if len(self._buffer) >= 1 << 20:
            self._flush()

    @property
    def n_examples(self) -> int:
        """Examples kept so far."""
        return len(self._offsets) - 1

    def _flush(self) -> None:
        self._ids.write(self._buffer.tobytes())
        del self._buffer[:]

    def finish(self, extra: dict | None = None) -> TokenizedDataset:
        self._flush()
        self._ids.close()
        self._sources.close()
        np.save(self.directory / "offsets.npy", np.frombuffer(self._offsets, dtype=np.int64))
        np.save(self.directory / "spans.npy", np.frombuffer(self._spans, dtype=np.int32).reshape(-1, 2))
        np.save(self.directory / "span_offsets.npy", np.frombuffer(self._span_offsets, dtype=np.int64))
        meta = {
            "dtype": self.dtype,
            "max_length": self.max_length,
            "stats": asdict(self.stats),
            **(extra or {}),
        }
        write_meta(self.directory, meta)
        return TokenizedDataset.open(self.directory)

    def abort(self) -> None:
        self._ids.close()
        self._sources.close()
        shutil.rmtree(self.directory, ignore_errors=True)


STORE_FILES = ("ids.bin", "offsets.npy", "spans.npy", "span_offsets.npy", "sources.txt", META_FILE)


def read_meta(directory: Path) -> dict:
    """A store's ``meta.json``; ``ValueError`` when it is missing or not JSON."""
    return read_json(directory / META_FILE, error=ValueError)


def write_meta(directory: Path, meta: dict) -> None:
    """Write a store's ``meta.json`` (compact JSON), atomically."""
    write_text_atomic(directory / META_FILE, json.dumps(meta))


def is_complete(directory: Path) -> bool:
    """Whether a store directory holds every file of a finished store."""
    return all((directory / name).is_file() for name in STORE_FILES)


def publish(staging: Path, final: Path) -> Path:
    """Move a finished store into its cache place atomically and return where it is.

    Another process may have published the same store meanwhile: that one is kept. An incomplete entry (a
    damaged cache) is replaced; if it cannot be, the staged store is used where it is."""
    try:
        os.replace(staging, final)
        return final
    except OSError:
        pass
    if is_complete(final):
        shutil.rmtree(staging, ignore_errors=True)
        return final
    shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(staging, final)
        return final
    except OSError:
        return staging
