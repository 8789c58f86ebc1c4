"""The cells of a grid: the product of its axes, each with its validated `symnoise train` config.

The alpha of a cell: 0 for a method without noise (``none``: one cell whatever the alpha lists say), else the
method's own ``alpha`` list, else ``axes.alpha``, else the dataset's ``alpha``, else the base config's
``noise.alpha``. Every cell's train config is built and validated with `symnoise.train.config.validate_config`
when the grid is loaded, so a grid with a bad field fails before anything is trained. Relative paths are read
from the working directory, as in `symnoise train`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import strict_yaml
from ..methods import get_method
from ..shipped_configs import resolve_config_path
from ..train.config import ConfigError, TrainConfig, apply_overrides, validate_config
from .layout import SYNTHETIC_TRAIN, GridLayout
from .sections import Axes, DatasetEntry, GridError, GridSpec, MethodEntry, ModelEntry, slug


@dataclass(frozen=True)
class Cell:
    """One (model, dataset, method, alpha, seed) combination and its validated train config."""

    id: str
    model: str
    dataset: str
    method: str
    alpha: float
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.training.output_dir)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML in ``path`` (read strictly: a duplicate key is an error); ``what`` names it in the `GridError`."""
    if not path.is_file():
        raise GridError(f"{path}: {what} not found")
    try:
        return strict_yaml.load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise GridError(f"{path}: not valid YAML ({error})") from None


def base_config_data(spec: GridSpec, source: str) -> dict[str, Any]:
    """The base train config as a mapping, with the grid's overrides applied."""
    if isinstance(spec.base, dict):
        data = copy.deepcopy(spec.base)
    else:
        # a shipped config's name (or its path in a clone) also works, so shipped grids run from an install
        data = read_yaml(resolve_config_path(spec.base), "base config (field base)")
        if not isinstance(data, dict):
            raise GridError(
                f"{source}: base: {spec.base} must hold a mapping with model, data, noise, training"
            )
    try:
        return apply_overrides(data, list(spec.overrides))
    except ConfigError as error:
        raise GridError(f"{source}: overrides: {error}") from None


def _alphas(method: MethodEntry, axes: Axes, dataset_alpha: float | None, base_alpha: float) -> list[float]:
    if get_method(method.noise_method).distribution is None:  # no noise: alpha means nothing
        return [0.0]
    if method.alpha:
        return list(method.alpha)
    if axes.alpha:
        return list(axes.alpha)
    return [dataset_alpha if dataset_alpha is not None else base_alpha]


def cell_id(model: str, dataset: str, method: str, alpha: float, seed: int) -> str:
    """``tiny-llama-alpaca-symnoise-a5-s42``: stable across re-runs, so finished cells are found again."""
    return f"{model}-{dataset}-{method}-a{alpha:g}-s{seed}"


def _cell_data(
    base: dict[str, Any],
    model: ModelEntry | None,
    dataset: DatasetEntry | None,
    method: MethodEntry,
    alpha: float,
    seed: int,
    run_dir: Path,
) -> dict[str, Any]:
    data = copy.deepcopy(base)
    if model is not None:
        data.setdefault("model", {})["name"] = model.path
    if dataset is not None:
        section = data.setdefault("data", {})
        section.update(path=dataset.path, format=dataset.format)
        if dataset.template:
            section["template"] = dataset.template
        if dataset.turns:
            section["turns"] = dataset.turns
    per_method = ("method", "alpha", "symmetric", "match_uniform_norm")
    noise = {k: v for k, v in (data.get("noise") or {}).items() if k not in per_method}
    data["noise"] = noise | method.noise | {"method": method.noise_method, "alpha": alpha}
    data.setdefault("training", {}).update(seed=seed, output_dir=str(run_dir))
    return data


def _checked_pairs(spec: GridSpec, source: str, models: list, datasets: list) -> set[tuple[str, str]] | None:
    """``axes.pairs`` as a set, each pair checked to name a model and a dataset of the axes."""
    if spec.axes.pairs is None:
        return None
    model_names = {m.name for m in models if m is not None}
    dataset_names = {d.name for d in datasets if d is not None}
    for i, (model, dataset) in enumerate(spec.axes.pairs):
        if model not in model_names or dataset not in dataset_names:
            raise GridError(
                f"{source}: axes.pairs.{i}: [{model}, {dataset}] must name a model of axes.model "
                f"({', '.join(sorted(model_names)) or 'none'}) and a dataset of axes.dataset "
                f"({', '.join(sorted(dataset_names)) or 'none'})"
            )
    return {tuple(p) for p in spec.axes.pairs}


def expand_cells(spec: GridSpec, source: str, pretrained_model: Path | None = None) -> list[Cell]:
    """Every cell of the grid, each with its validated train config; an error names the cell and the field."""
    base = base_config_data(spec, source)
    base_model = ModelEntry(name=spec.pretrain.name, path=str(pretrained_model)) if spec.pretrain else None
    models = spec.axes.model or [base_model]
    datasets = spec.axes.dataset or [None]
    base_alpha = float((base.get("noise") or {}).get("alpha", 5.0))
    seeds = spec.axes.seed or [int((base.get("training") or {}).get("seed", 42))]
    cells, seen = [], {}
    pairs = _checked_pairs(spec, source, models, datasets)
    for model in models:
        model_name = model.name if model else slug((base.get("model") or {}).get("name", "model"))
        for entry, dataset in ((d, resolve_dataset(d, spec) if d else None) for d in datasets):
            dataset_name = (
                dataset.name
                if dataset
                else slug(Path(str((base.get("data") or {}).get("path", "data"))).stem)
            )
            if pairs is not None and (model and model.name, entry and entry.name) not in pairs:
                continue
            for method in spec.axes.method:
                for alpha in _alphas(method, spec.axes, dataset and dataset.alpha, base_alpha):
                    for seed in seeds:
                        ident = cell_id(model_name, dataset_name, method.name, alpha, seed)
                        if ident in seen:
                            raise GridError(
                                f"{source}: two cells have the id {ident}; give the axis entries "
                                "distinct names"
                            )
                        seen[ident] = True
                        run_dir = GridLayout(spec.output_dir).cell_dir(ident)
                        data = _cell_data(base, model, dataset, method, alpha, seed, run_dir)
                        try:
                            config = validate_config(data, source=f"{source}: cell {ident}")
                        except ConfigError as error:
                            raise GridError(str(error)) from None
                        if not config.training.save_model:
                            raise GridError(
                                f"{source}: cell {ident}: training.save_model: false writes no model, and every "
                                "cell generates with its trained model"
                            )
                        cells.append(Cell(ident, model_name, dataset_name, method.name, alpha, seed, config))
    return cells


def synthetic_dir(spec: GridSpec) -> Path:
    """Where the synthetic fallback data (train.jsonl, eval.jsonl) is written."""
    return GridLayout(spec.output_dir).synthetic


def pretrained_model_dir(spec: GridSpec) -> Path:
    """Where the `pretrain` section's model is written (and read by every cell)."""
    return GridLayout(spec.output_dir).pretrained_model


def resolve_dataset(dataset: DatasetEntry, spec: GridSpec) -> DatasetEntry:
    """The dataset entry itself, or, when its file is missing and the fallback is synthetic, the synthetic set
    (named "synthetic", so no table calls it by the missing dataset's name)."""
    if dataset.fallback != "synthetic" or Path(dataset.path).is_file():
        return dataset
    return dataset.model_copy(
        update={
            "name": "synthetic",
            "path": str(synthetic_dir(spec) / SYNTHETIC_TRAIN),
            "format": "alpaca",
            "template": "alpaca",
        }
    )
