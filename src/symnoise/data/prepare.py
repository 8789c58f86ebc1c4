"""From a dataset description to a tokenised dataset and its report, cached across runs by content hash.

`prepare_dataset` reads one source (`DatasetSpec`: path, format, template, split, limit, turns), validates every
row, renders and tokenises the records as it reads them, and returns a memory-mapped `TokenizedDataset` with a
`DatasetReport`: rows read and skipped (with reasons), warnings, conversations, assistant turns trained, turns
truncated by ``max_length``, examples dropped.

The result of a local file (or ``save_to_disk`` folder) is stored under ``$SYMNOISE_CACHE`` (default ``~/.cache/symnoise``) in
``tokenized/<key>/``, where the key hashes the file's bytes, every setting that changes the tokens and the
tokenizer itself (its vocabulary, merges, special tokens and chat template). A second run with the same file and
settings opens the stored arrays instead of tokenising again. Hub datasets are cached by `datasets` itself and
are tokenised each run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

from .. import __version__
from .conversations import Conversation
from .formats import LoadReport, default_template, iter_records
from .readers import local_path
from .store import META_FILE, TokenizedDataset, TokenStats, publish, read_meta, write_meta
from .tokenize import check_tokenizer, write_tokens

CACHE_FORMAT = 2
logger = logging.getLogger("symnoise.data")


@dataclass(frozen=True)
class DatasetSpec:
    """One data source and how to read it (a `data.datasets` entry, or the single `data.path`)."""

    path: str
    format: str = "auto"
    template: str | None = None
    split: str = "train"
    limit: int | None = None
    turns: str = "all"
    on_bad_row: str = "error"
    weight: float | None = None


@dataclass
class DatasetReport:
    """What one source gave: the load report, the template used, what tokenising kept, and whether it came from
    the cache."""

    load: LoadReport
    template: str
    turns: str
    stats: TokenStats
    examples: int
    tokens: int
    cached: bool = False

    @classmethod
    def of(cls, dataset: TokenizedDataset, load: LoadReport, template: str, turns: str, cached: bool = False):
        """The report of ``dataset``, read from ``load`` with ``template`` and ``turns``."""
        return cls(load, template, turns, dataset.stats, len(dataset), dataset.n_tokens, cached)

    def to_dict(self) -> dict:
        load, stats = self.load, self.stats
        return {
            "source": load.source,
            "format": load.format,
            "template": self.template,
            "turns": self.turns,
            "rows": load.n_rows,
            "loaded": load.n_loaded,
            "skipped": dict(load.skipped),
            "first_bad_row": load.first_bad,
            "warnings": dict(load.warnings),
            "conversations": load.n_conversations,
            "assistant_turns": load.n_assistant_turns,
            "turns_unused": _unused(load),
            "turns_trained": stats.turns_trained,
            "turns_truncated": stats.turns_truncated,
            "examples": self.examples,
            "truncated": stats.n_truncated,
            "dropped": len(stats.dropped_sources),
            "tokens": self.tokens,
            "cached": self.cached,
        }

    def summary(self) -> str:
        """Two log lines: what was read, and what is trained."""
        stats = self.stats
        trained = f"{self.examples} examples ({self.tokens} tokens, template {self.template})"
        turns = f"{stats.turns_trained} assistant turns trained"
        if self.load.n_conversations:
            turns += f" (data.turns: {self.turns}"
            turns += f"; {_unused(self.load)} later turns not used)" if self.turns == "first" else ")"
        cut = f"{stats.turns_truncated} turns truncated by max_length in {stats.n_truncated} examples"
        dropped = (
            f", {len(stats.dropped_sources)} examples dropped (prompt alone reaches max_length)"
            if stats.dropped_sources
            else ""
        )
        cached = " [from cache]" if self.cached else ""
        return f"{self.load.summary()}\n  {trained}; {turns}; {cut}{dropped}{cached}"


def _unused(load: LoadReport) -> int:
    return load.n_unused_turns


def cache_root() -> Path:
    """Where tokenised data is cached: ``$SYMNOISE_CACHE``, else ``$XDG_CACHE_HOME/symnoise``, else
    ``~/.cache/symnoise``."""
    if os.environ.get("SYMNOISE_CACHE"):
        return Path(os.environ["SYMNOISE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "symnoise"


def file_digest(path: Path) -> str:
    """A hash of a file's bytes, or of every file in a folder (a ``save_to_disk`` dataset) with its relative name."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in a tokenizer that changes token ids: vocabulary, merges, normaliser, special
    tokens, chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    special = (
        type(tokenizer).__name__,
        getattr(tokenizer, "chat_template", None),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        len(tokenizer),
        tokenizer("a", add_special_tokens=True)["input_ids"],
    )
    digest.update(repr(special).encode("utf-8"))
    return digest.hexdigest()


def _cache_key(spec: DatasetSpec, path: Path, tokenizer, max_length: int) -> str:
    settings = {
        "cache_format": CACHE_FORMAT,
        "symnoise": __version__,
        "file": file_digest(path),
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("path", "weight")},
        "max_length": max_length,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _from_cache(directory: Path) -> tuple[TokenizedDataset, DatasetReport] | None:
    if not (directory / META_FILE).is_file():
        return None
    try:
        dataset = TokenizedDataset.open(directory)
        meta = read_meta(directory)
        saved = meta["report"]
        load = LoadReport(
            **{
                **saved["load"],
                "skipped": _counter(saved["load"]["skipped"]),
                "warnings": _counter(saved["load"]["warnings"]),
            }
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged or older entry: tokenise again
    return dataset, DatasetReport.of(dataset, load, saved["template"], saved["turns"], cached=True)


def _counter(values: dict):
    from collections import Counter

    return Counter(values)


def prepare_dataset(
    spec: DatasetSpec, tokenizer, max_length: int, cache: bool = True
) -> tuple[TokenizedDataset, DatasetReport]:
    """Reads, checks and tokenises one source (or opens its cached result); see the module docstring."""
    path = local_path(spec.path)
    directory = None
    if cache and path is not None:
        directory = cache_root() / "tokenized" / _cache_key(spec, path, tokenizer, max_length)
        cached = _from_cache(directory)
        if cached is not None:
            return cached
    load, records = iter_records(spec.path, spec.format, spec.on_bad_row, spec.split, spec.limit, spec.turns)
    first = next(records)
    template = spec.template or default_template(load.format, conversational=isinstance(first, Conversation))
    check_tokenizer(tokenizer, template, max_length)
    staging_parent = directory.parent if directory is not None else None
    if staging_parent is not None:
        try:
            staging_parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix="tmp-", dir=staging_parent))
        except OSError as error:  # a read-only or full cache place: tokenise without caching
            logger.warning(
                "data cache %s not writable (%s); tokenising without a cache",
                staging_parent,
                error.strerror or error,
            )
            directory = None
    if directory is None:
        staging = Path(tempfile.mkdtemp(prefix="symnoise-tokens-"))
    dataset = write_tokens(chain([first], records), tokenizer, template, max_length, staging / "store")
    report = DatasetReport.of(dataset, load, template, spec.turns)
    _save_report(staging / "store", report)
    if directory is None:
        _remove_at_exit(staging)
        return dataset, report
    final = publish(staging / "store", directory)
    if final == directory:
        shutil.rmtree(staging, ignore_errors=True)
    else:
        _remove_at_exit(staging)
    return TokenizedDataset.open(final), report


def _save_report(directory: Path, report: DatasetReport) -> None:
    meta = read_meta(directory)
    load = asdict(report.load)
    load["skipped"], load["warnings"] = dict(report.load.skipped), dict(report.load.warnings)
    meta["report"] = {"load": load, "template": report.template, "turns": report.turns}
    write_meta(directory, meta)


def _remove_at_exit(directory: Path) -> None:
    import atexit
    import shutil

    atexit.register(shutil.rmtree, directory, ignore_errors=True)
