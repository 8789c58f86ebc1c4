"""The config files shipped inside the package: list them, find one by name, copy one to start from.

A shipped config is named by its path under the package's ``configs/`` folder without ``.yaml``:
``qwen2.5-0.5b/alpaca-symnoise-lora``, ``llama2-7b/alpaca-symnoise``, ``grid/mini``, ``accelerate/fsdp``.
They are installed with the wheel, so they work the same from a clone and from ``pip install symnoise``
(a clone also has them at ``configs/``, a link to the same folder).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"

PAPER_GRID = "llama2-7b/"  # the papers' train configs; listed after the starters for smaller models
KINDS = {
    "accelerate": "accelerate",
    "grid": "grid",
}  # top folder -> kind; every other folder holds train configs


EXPECTED_SUFFIX = ".expected"  # grid/NAME.expected.yaml: the paper's numbers for grid/NAME.yaml


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # e.g. "qwen2.5-0.5b/alpaca-symnoise-lora"
    kind: str  # "train", "grid", "accelerate" (the command that reads it) or "expected" (a grid's paper numbers)
    path: Path
    description: str  # the file's first comment line


def _description(path: Path) -> str:
    """The first sentence of the file's leading comment block (which may span several lines)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"[.!?](?=\s|$)", text)
    return text[: end.end()] if end else text


def list_configs(root: Path = CONFIGS_ROOT) -> list[ShippedConfig]:
    """Every shipped config, sorted by kind (train first) and name, the starters before the paper grid."""
    found = []
    for path in root.rglob("*.yaml"):
        name = path.relative_to(root).with_suffix("").as_posix()
        kind = "expected" if name.endswith(EXPECTED_SUFFIX) else KINDS.get(name.split("/")[0], "train")
        found.append(ShippedConfig(name, kind, path, _description(path)))
    order = {"train": 0, "grid": 1, "accelerate": 2, "expected": 3}
    return sorted(found, key=lambda c: (order[c.kind], c.name.startswith(PAPER_GRID), c.name))


def find_config(name: str, root: Path = CONFIGS_ROOT) -> ShippedConfig:
    """The shipped config called ``name`` (``.yaml`` and a leading ``configs/`` are allowed); KeyError names
    the closest matches when there is none."""
    import difflib

    wanted = name.removeprefix("configs/").removesuffix(".yaml")
    configs = {config.name: config for config in list_configs(root)}
    if wanted in configs:
        return configs[wanted]
    close = difflib.get_close_matches(wanted, list(configs), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"no shipped config named {name!r}{hint} (symnoise configs list shows them all)")


def resolve_config_path(path: str | Path) -> Path:
    """A config file given by path, or else by shipped name: ``symnoise train qwen2.5-0.5b/alpaca-symnoise``.

    An existing file always wins, so a local copy is never shadowed by a shipped config of the same name.
    """
    path = Path(path)
    if path.exists():
        return path
    try:
        return find_config(str(path)).path
    except KeyError:
        return path  # the caller reports the missing file


def copy_config(name: str, destination: str | Path, overwrite: bool = False) -> Path:
    """Copy a shipped config to ``destination`` (a file, or a folder that gets the config's file name).

    Raises FileExistsError rather than replace an existing file, unless ``overwrite``.
    """
    config = find_config(name)
    destination = Path(destination)
    target = destination / config.path.name if destination.is_dir() else destination
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another destination or pass --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config.path, target)
    return target
