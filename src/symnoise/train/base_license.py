"""The licence a run's model card states: the base model's, read from the base model's own card.

A fine-tune carries its base model's licence, so the card takes it from where Hugging Face keeps it: the YAML
header of the base model's ``README.md`` (``license``, and for ``license: other`` also ``license_name`` and
``license_link``). A local model folder is read directly (a symnoise run's card states its licence the same way,
so a fine-tune of a fine-tune keeps it); a hub model's card is read from the Hugging Face cache, else from the
hub when it can be reached. ``model.license`` in the config is the fallback for a base model whose card states no
licence or cannot be read; when both are known and differ, the card's wins and a warning names both, since a
config copied from a starter and pointed at another model keeps a licence written for the starter's model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..offline import hub_problem

logger = logging.getLogger("symnoise.train")

CARD_FILE = "README.md"
HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class License:
    """A licence as a model card's metadata states it; ``name`` and ``link`` go with ``license: other``."""

    id: str
    name: str | None = None
    link: str | None = None
    source: str = "the base model's card"

    def metadata_lines(self) -> list[str]:
        """The card header's lines (hub metadata keys)."""
        lines = [f"license: {self.id}"]
        lines += [f"license_name: {self.name}"] if self.name else []
        lines += [f"license_link: {self.link}"] if self.link else []
        return lines

    def label(self) -> str:
        """The licence in words for the card's table: its id, or for ``other`` its name and link."""
        if self.id == "other" and (self.name or self.link):
            return " ".join(part for part in (self.name or "other", self.link and f"({self.link})") if part)
        return self.id


def license_from_metadata(metadata: object) -> License | None:
    """The licence of a card's metadata mapping, or None when it states none."""
    if not isinstance(metadata, dict):
        return None
    value = metadata.get("license")
    if not isinstance(value, str) or not value.strip():
        return None
    name, link = metadata.get("license_name"), metadata.get("license_link")
    return License(
        value.strip(),
        name.strip() if isinstance(name, str) and name.strip() else None,
        link.strip() if isinstance(link, str) and link.strip() else None,
    )


def license_from_card(text: str) -> License | None:
    """The licence in a model card's YAML header (between the leading ``---`` lines), or None."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
        return license_from_metadata(yaml.safe_load("\n".join(lines[1:end])))
    except (StopIteration, yaml.YAMLError):
        return None


def _read_card(path: Path) -> License | None:
    try:
        return license_from_card(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def base_model_license(name: str, revision: str | None = None) -> License | None:
    """The licence the base model's card states, or None: its card has none, or cannot be read (a local folder
    without ``README.md``, no cached card and the hub offline or unreachable, no access)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _read_card(folder / CARD_FILE)
    try:
        from huggingface_hub import HfApi, try_to_load_from_cache

        cached = try_to_load_from_cache(name, CARD_FILE, revision=revision)
        if isinstance(cached, str):
            return _read_card(Path(cached))
        if hub_problem() is not None:
            return None
        info = HfApi().model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception:  # not a valid repo id, no such model, no access, a network error: not stated
        return None
    card_data = getattr(info, "card_data", None)
    return license_from_metadata(card_data.to_dict() if card_data is not None else None)


def card_license(config_license: str | None, base: License | None) -> License | None:
    """The licence the run's card states: the base model's card's; else ``model.license``; else None."""
    if base is not None:
        if config_license and config_license != base.id:
            logger.warning(
                "model.license=%s in the config differs from the licence %s that the base model's card states; "
                "the model card states the base model's (remove model.license, which a copied config may have "
                "kept from another model)",
                config_license,
                base.label(),
            )
        return base
    if config_license:
        return License(config_license, source="model.license in the config")
    return None
