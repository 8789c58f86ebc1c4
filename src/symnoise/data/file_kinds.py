"""Which local data files symnoise reads, and what a file holds judging by its first bytes.

A file is read by its name (`SUFFIX_KINDS`); its first bytes must agree, so that JSON named ``.parquet`` or a
Parquet file named ``.json`` is refused naming both instead of failing deep inside a parser. A folder is read
only when ``datasets``' ``save_to_disk`` wrote it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

SUFFIX_KINDS = {
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".tsv": "tsv",
}
FILE_SUFFIXES = tuple(SUFFIX_KINDS)
SAVED_DATASET = "a folder written by datasets' save_to_disk"
SUPPORTED = f"{', '.join(FILE_SUFFIXES)} files, or {SAVED_DATASET}"

PARQUET, ARROW, GZIP, ZIP, JSON, TEXT, BINARY = (
    "Parquet",
    "Arrow",
    "gzip-compressed data",
    "a zip archive",
    "JSON",
    "text",
    "binary data",
)
_MAGIC = (
    (b"PAR1", PARQUET),
    (b"ARROW1", ARROW),
    (b"\xff\xff\xff\xff", ARROW),  # an Arrow IPC stream (as datasets writes its .arrow files)
    (b"\x1f\x8b", GZIP),
    (b"PK\x03\x04", ZIP),
)
_BINARY = {PARQUET, ARROW, GZIP, ZIP}
# what each kind of name accepts; None: any text (its own reader judges it)
_ACCEPTS = {"json": None, "parquet": {PARQUET}, "arrow": {ARROW}, "csv": {TEXT}, "tsv": {TEXT}}
_SUFFIX_OF_CONTENT = {
    PARQUET: ".parquet",
    ARROW: ".arrow",
    GZIP: ".json.gz or .jsonl.gz",
    JSON: ".json or .jsonl",
    TEXT: ".csv or .tsv",
}
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def file_suffix(path: Path) -> str:
    """The suffix that names a file's type, two parts for a compressed file (``train.jsonl.gz`` -> ``.jsonl.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return path.suffix.lower()


def is_compressed(path: Path) -> bool:
    return file_suffix(path).endswith(".gz")


def content_kind(head: bytes) -> str:
    """What the first bytes of a file look like: Parquet, Arrow, gzip, zip, JSON, other text, or binary data."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(_WIDE_BOMS):
        return TEXT  # UTF-16/32 text: the readers name its encoding
    text = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
    if text[:1] in (b"[", b"{"):
        return JSON
    return BINARY if b"\x00" in head and head.count(0) < len(head) // 4 else TEXT


def content_mismatch(path: Path, head: bytes) -> str | None:
    """The error text when a file's first bytes do not fit its name (``head``: the bytes as stored, before any
    decompression), else None."""
    suffix = file_suffix(path)
    content = content_kind(head)
    if suffix.endswith(".gz"):
        accepted = {GZIP}
    else:
        accepted = _ACCEPTS[SUFFIX_KINDS[suffix]]
        if accepted is None:  # JSON text: anything but a known binary format goes to the JSON reader
            accepted = {content} - _BINARY - {BINARY}
    if content in accepted or not head:
        return None
    rename = _SUFFIX_OF_CONTENT.get(content)
    advice = f"rename it to end in {rename}" if rename else "convert it"
    if content == ZIP:
        advice = "unzip it"
    return f"the file is named {suffix} but its content looks like {content}; {advice}"


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )
