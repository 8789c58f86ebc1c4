"""Whether the Hugging Face hub may be contacted, whether it answers, and what is cached, read from the
environment at call time.

``huggingface_hub`` reads ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and its cache folders once, when it is imported;
users and tests set them later (a launcher script, ``monkeypatch``), so every symnoise check asks here instead.
A probe here answers in seconds where the libraries retry for tens of seconds before failing.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def hub_offline(environ: Mapping[str, str] = os.environ, datasets: bool = False) -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (with ``datasets``, ``HF_DATASETS_OFFLINE`` counts too)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(environ.get(name, "").strip().lower() in TRUE_VALUES for name in names)


HUB_PROBE_TIMEOUT_S = 5.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers an HTTP request within ``timeout`` seconds, else why not."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{hub_endpoint()}/api/whoami-v2", method="HEAD"), timeout=timeout
        ):
            return None
    except urllib.error.HTTPError:
        return None  # the hub answered (401 without a token): it is reachable
    except (TimeoutError, urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


def _huggingface_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface"


def hub_dataset_cached(repo: str) -> bool:
    """Whether a hub dataset (``org/name``) has anything in the hub's download cache or in ``datasets``' own
    cache: then ``datasets.load_dataset`` may work without the hub, and only it can tell."""
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or _huggingface_home() / "hub").expanduser()
    datasets_cache = Path(
        os.environ.get("HF_DATASETS_CACHE") or _huggingface_home() / "datasets"
    ).expanduser()
    snapshots = hub_cache / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    prepared = datasets_cache / repo.replace("/", "___")
    return any(folder.is_dir() and any(folder.iterdir()) for folder in (snapshots, prepared))


def hub_file_cached(repo: str, filename: str, repo_type: str = "dataset") -> bool:
    """Whether one file of a hub repository (``org/name``) is in the hub cache where ``huggingface_hub`` will look
    for it (its main revision)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, repo_type=repo_type)
    except Exception:  # huggingface_hub missing, or not a valid repo id: not cached
        return False
    return isinstance(found, str)


def hub_file_unavailable(repo: str, filename: str | None = None, repo_type: str = "dataset") -> str | None:
    """None when a file of a hub repository is cached, or the hub may be asked for it and answers; else why not,
    as the end of a sentence about the file: "is not in the Hugging Face cache, and ...".

    Ask this before a library fetches the file: ``huggingface_hub`` and ``datasets`` retry a hub that does not
    answer for about 25 s, printing each retry, before they fail; this answers in seconds. ``filename``: the file
    looked for in the hub cache; None: the dataset as a whole, fetched by ``datasets`` (its own cache and
    ``HF_DATASETS_OFFLINE`` count then too)."""
    whole = filename is None
    if hub_dataset_cached(repo) if whole else hub_file_cached(repo, filename, repo_type):
        return None
    if hub_offline(datasets=whole):
        variables = "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE)" if whole else "HF_HUB_OFFLINE"
        return f"is not in the Hugging Face cache, and {variables} is set"
    problem = hub_reachable()
    if problem is not None:
        return f"is not in the Hugging Face cache, and {hub_endpoint()} cannot be reached ({problem})"
    return None


def hub_commit(name: str, revision: str | None = None) -> str | None:
    """The commit a hub model's revision resolves to in the local Hugging Face cache; None when not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # huggingface_hub missing, or not a valid repo id: not cached
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def hub_problem(datasets: bool = False) -> str | None:
    """Why the hub cannot be used now ("HF_HUB_OFFLINE is set", "<endpoint> cannot be reached (reason)"), or None.

    With ``datasets``, ``HF_DATASETS_OFFLINE`` counts too. Answers within the probe's few seconds."""
    if hub_offline(datasets=datasets):
        names = "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE)" if datasets else "HF_HUB_OFFLINE"
        return f"{names} is set"
    problem = hub_reachable()
    return None if problem is None else f"{hub_endpoint()} cannot be reached ({problem})"


def hub_remedy(problem: str) -> str:
    """What to do about a `hub_problem`: unset the offline switch it names, or connect."""
    return (
        f"unset {problem.removesuffix(' is set')}"
        if problem.endswith(" is set")
        else "connect to the network"
    )


def path_like_parent(name: str) -> Path | None:
    """The existing local folder that makes ``org/name`` read as a path (``runs/my-model`` beside a ``runs/``
    folder), or None. Such a name is looked for locally first, and reported missing as a path first."""
    parts = name.split("/")
    if len(parts) < 2 or not parts[0] or name.startswith(("/", ".", "~")):
        return None
    parent = Path(name).expanduser().parent
    return parent if parent.is_dir() else None


def folder_listing(folder: Path, limit: int = 5) -> str:
    """``"runs/ holds a, b, c, ..."`` (or ``"runs/ is empty"``): the names nearby, to spot a typo."""
    try:
        names = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    except OSError:
        return f"{folder.as_posix()}/ cannot be listed"
    if not names:
        return f"{folder.as_posix()}/ is empty"
    more = ", ..." if len(names) > limit else ""
    return f"{folder.as_posix()}/ holds {', '.join(names[:limit])}{more}"


def model_unavailable(
    name: str, revision: str | None = None, subject: str = "model.name", instead: str | None = None
) -> str | None:
    """Why the model ``name``, which is not an existing local path, cannot be loaded now; None when it may be.

    Said before anything is loaded, in seconds, instead of transformers' retries and traceback: a name that can
    only be a path (``./x``, ``/x``, ``a/b/c``) does not exist; a cached hub model is fine; ``runs/my-model``
    beside a ``runs/`` folder is reported as a missing folder first when the hub cannot be asked; otherwise the
    hub must be usable. ``subject`` names where the name came from (``model.name``, ``MODEL``), ``instead`` what
    to do rather than download (default: set ``subject`` to a local model folder)."""
    instead = instead or f"set {subject} to a local model folder"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        return f"{subject}: {name} does not exist (not a folder, and not a hub name like org/model)"
    if hub_commit(name, revision) is not None:
        return None
    parent = path_like_parent(name)
    if parent is not None:
        problem = hub_problem()
        if problem is None:
            return None  # the hub may have it; loading says so if it does not
        return (
            f"{subject}: there is no local folder {name} ({folder_listing(parent)}), and {name} is not a hub "
            f"model in the Hugging Face cache, which cannot be downloaded now: {problem}. If it is a local "
            f"folder, correct the path; if it is a hub model, {hub_remedy(problem)}"
        )
    if hub_offline():
        return (
            f"{subject}: {name} is not a local folder and is not in the Hugging Face cache, and HF_HUB_OFFLINE "
            f"is set, so it cannot be downloaded; unset HF_HUB_OFFLINE, or {instead}"
        )
    problem = hub_reachable()
    if problem is not None:
        return (
            f"{subject}: {name} is not a local folder and is not in the Hugging Face cache, and "
            f"{hub_endpoint()} cannot be reached ({problem}); connect to the network, or {instead}"
        )
    return None
