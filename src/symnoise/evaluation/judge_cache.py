"""An append-only, crash-safe cache of judge verdicts, one JSON object per line.

Every verdict is written, flushed and fsync'ed the moment it arrives, so killing a run loses at most the request
in flight, and a re-run pays for no verdict twice. A line torn by a kill mid-write is dropped on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from symnoise.files import append_json_lines

log = logging.getLogger(__name__)


def cache_key(judge_id: str, instruction: str, output_a: str, output_b: str) -> str:
    """Hash of everything that determines a verdict: the judge, the instruction and both outputs in shown order.

    The order is part of the key because ``output_a`` is the one shown first; swapping them is another request.
    """
    payload = json.dumps([judge_id, instruction, output_a, output_b], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Verdicts keyed by :func:`cache_key`, loaded from and appended to a JSONL file. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self.n_dropped_lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        self._drop_torn_tail()
        with self.path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                record = _parse_line(line)
                if record is None:
                    self.n_dropped_lines += 1
                    log.warning("judge cache %s: ignoring unreadable line %d", self.path, number)
                    continue
                self._records[record["key"]] = record

    def _drop_torn_tail(self) -> None:
        """Cut a last line that has no newline (a write killed halfway), so the next append starts clean."""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("judge cache %s: dropping a torn last line (%d bytes)", self.path, len(data) - keep)
        self.n_dropped_lines += 1
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def put(self, record: dict[str, Any], replace: bool = False) -> None:
        """Append ``record`` (which must carry ``"key"``) durably. A key already present is not written again,
        unless ``replace`` (a re-asked null): then the new line is appended and, being later, wins on load."""
        with self._lock:
            if record["key"] in self._records and not replace:
                return
            append_json_lines(self.path, [record], durable=True)
            self._records[record["key"]] = record


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    return record
