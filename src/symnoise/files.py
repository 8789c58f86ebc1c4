"""Files that survive a kill, and the JSON readers every command shares.

Every file symnoise writes whole is written through `write_text_atomic` (a temporary file in the same folder,
flushed and fsync'ed, then renamed over the target), so a kill leaves either the old file or the new one, never
half of one. Logs that grow line by line (metrics, generations, judge verdicts) are appended with
`append_json_lines`, which forces each batch to disk. Whole folders (a checkpoint, a merged or pretrained model)
are written beside their place and renamed into it (`write_dir_atomic`, `publish_dir`); figures go through
`write_figure_atomic`. The readers raise one error type per caller (``error=``) whose message names the file,
and for JSON Lines the line, so every command reports bad files the same way.
"""

from __future__ import annotations

import json
import os
import shutil
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


def write_figure_atomic(path: str | os.PathLike[str], figure: Any) -> Path:
    """Lay out a matplotlib ``figure``, write it to ``path`` atomically (PNG at 100 dpi, or the format the suffix
    names), and close it so a long report does not keep every figure in memory."""
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix.lstrip(".").lower()
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format=suffix or "png", dpi=100))
    plt.close(figure)
    return Path(path)


def publish_dir(staged: str | os.PathLike[str], final: str | os.PathLike[str], aside: Path) -> None:
    """Rename the fully written folder ``staged`` to ``final``, replacing an older ``final``.

    The files are flushed first; an older ``final`` is renamed to ``aside`` and removed once the new one is in
    place, so a kill leaves the old folder or the new one whole (the old one perhaps under ``aside``).
    """
    staged, final = Path(staged), Path(final)
    fsync_tree(staged)
    moved = False
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        moved = True
    os.replace(staged, final)
    fsync_dir(final.parent)
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


def write_dir_atomic(final: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on an empty folder beside ``final``, then publish it as ``final`` (`publish_dir`).

    A failed ``write`` removes the staged folder and leaves ``final`` as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write(staging)
        publish_dir(staging, final, aside=final.with_name(f".{final.name}.old-{os.getpid()}"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


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
def _read_text(path: Path, error: FileErrorType, errors: str = "strict") -> str:
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read ({exc})") from None


def _json_lines(path: Path, text: str, error: FileErrorType, skip_bad: bool = False) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            if not skip_bad:
                raise error(f"{path}: line {number}: not valid JSON ({exc})") from None
    return rows


def read_json(path: str | os.PathLike[str], error: FileErrorType = FileFormatError) -> Any:
    """The JSON value in ``path``; ``error(message)`` is raised when it is missing, unreadable or not JSON."""
    path = Path(path)
    text = _read_text(path, error)
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
    text = _read_text(path, error, errors="replace" if skip_bad else "strict")
    return [row for _, row in _json_lines(path, text, error, skip_bad)]


def read_placed_json_rows(
    path: str | os.PathLike[str], error: FileErrorType = FileFormatError, what: str = "objects"
) -> list[tuple[str, Any]]:
    """The rows of a list file with where each stands, for messages: ``("row N", row)`` (from 0) for the items of
    a JSON list, ``("line N", row)`` (from 1) for JSON Lines.

    What the text is decides, not the file's name: text that starts with ``[`` and parses is a JSON list, other
    text is one JSON value per line. Only a ``.jsonl`` file may be JSON Lines of lists; a file of another name
    that holds one JSON value other than a list is refused (``what`` names the rows the caller wanted).
    """
    path = Path(path)
    text = _read_text(path, error)
    lines, starts_as_list = path.suffix == ".jsonl", text.lstrip().startswith("[")
    if lines and not starts_as_list:
        return _json_lines(path, text, error)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if starts_as_list and not lines:
            raise error(f"{path}: not valid JSON ({exc})") from None
        return _json_lines(path, text, error)  # not one JSON value: one per line
    if isinstance(whole, list):
        return [(f"row {index}", row) for index, row in enumerate(whole)]
    raise error(f"{path}: expected a JSON list of {what} or one per line, got {type(whole).__name__}")


def read_json_rows(
    path: str | os.PathLike[str], error: FileErrorType = FileFormatError, what: str = "objects"
) -> list[Any]:
    """The rows of a JSON list or JSON Lines file (see `read_placed_json_rows`)."""
    return [row for _, row in read_placed_json_rows(path, error, what)]
