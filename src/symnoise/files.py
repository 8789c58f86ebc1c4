"""Files that survive a kill, and the JSON readers every command shares.

Every file symnoise writes whole is written through `write_text_atomic` (a temporary file in the same folder,
flushed and fsync'ed, then renamed over the target), so a kill leaves either the old file or the new one, never
half of one. Logs that grow line by line (metrics, generations, judge verdicts) are appended with
`append_json_lines`, which forces each batch to disk. The readers raise one error type per caller (``error=``)
whose message names the file, and for JSON Lines the line, so every command reports bad files the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

FileErrorType = Callable[[str], Exception]


class FileFormatError(ValueError):
    """A file is missing or is not the JSON it should be."""


# ---------------------------------------------------------------------------------------------- writing
def make_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Create the folder ``path`` and its missing parents; returns the folders this call created, outermost first,
    so that a command that fails before writing anything can take back exactly those (`remove_empty_dirs`)."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_empty_dirs(created: Iterable[Path]) -> None:
    """Remove the folders of ``created`` (as `make_dirs` returned them) that are empty, innermost first; a
    folder holding anything, and every folder above it, stays. Folders that existed before are never named."""
    for folder in reversed(list(created)):
        try:
            folder.rmdir()  # refuses a folder that is not empty
        except OSError:
            return


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename into it is durable after this); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every file under ``root`` and the directories holding them, so a rename publishes durable data."""
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, fsync it, then rename it over ``path``.

    ``write`` may use any writer that takes a path (``torch.save``, a CSV writer). The temporary file is removed
    if ``write`` fails, so a failed write leaves the old ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see `write_atomic`."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON with a final newline, atomically."""
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_json_lines_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Replace ``path`` with one JSON value per line, atomically."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_json_lines(path: str | os.PathLike[str], rows: Iterable[Any], durable: bool = True) -> None:
    """Append one JSON value per line; with ``durable`` the lines are fsync'ed before returning, so a kill loses
    at most the batch being written (and a torn last line, which the readers below can skip)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------- reading
def read_json(path: str | os.PathLike[str], error: FileErrorType = FileFormatError) -> Any:
    """The JSON value in ``path``; ``error(message)`` is raised when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def read_json_lines(
    path: str | os.PathLike[str], error: FileErrorType = FileFormatError, skip_bad: bool = False
) -> list[Any]:
    """One JSON value per non-blank line of ``path``.

    A line that is not JSON raises ``error`` naming its number, unless ``skip_bad`` (logs that a kill may have
    torn: the bad lines are left out).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace" if skip_bad else "strict")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if not skip_bad:
                raise error(f"{path}: line {number} is not valid JSON ({exc})") from None
    return rows


def read_json_rows(
    path: str | os.PathLike[str], error: FileErrorType = FileFormatError, what: str = "objects"
) -> list[Any]:
    """A list of rows: a ``.jsonl`` file's lines, or a JSON file holding a list (``what`` names the rows in the
    error when it holds something else)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_json_lines(path, error)
    rows = read_json(path, error)
    if not isinstance(rows, list):
        raise error(f"{path}: expected a JSON list of {what}, got {type(rows).__name__}")
    return rows
