"""Whether the Hugging Face hub may be contacted, read from the environment at call time.

``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is imported; users and tests set it later (a launcher
script, ``monkeypatch``), so every symnoise check that must not reach the hub asks here instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def hub_offline(environ: Mapping[str, str] = os.environ, datasets: bool = False) -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (with ``datasets``, ``HF_DATASETS_OFFLINE`` counts too)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(environ.get(name, "").strip().lower() in TRUE_VALUES for name in names)
