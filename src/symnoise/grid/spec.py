"""The grid file of `symnoise grid`: a matrix of training runs and how each is evaluated, validated up front.

A grid file has these sections (every field is documented below, next to its type)::

    output_dir: runs/grid/table1          # one folder per cell under OUTPUT/cells/, the report in OUTPUT/report/
    base: configs/llama2-7b/alpaca-none.yaml   # a `symnoise train` config file, or the config itself inline
    overrides: [training.max_steps=100]   # dotted overrides applied to the base for every cell
    axes:                                 # the cells are the product of these lists
      model: [meta-llama/Llama-2-7b-hf]   # names/paths, or {name, path}; empty: the base config's model
      dataset: [{name: alpaca, path: tatsu-lab/alpaca, format: alpaca, alpha: 5}]
      method: [none, neftune, {name: gaussian-unmatched, method: gaussian, noise: {match_uniform_norm: false}}]
      alpha: [5, 10]                      # optional; a method's own alpha list wins, then this, then the dataset's
      seed: [42]
      pairs: null                         # or [[model, dataset], ...]: only these combinations
    evaluation: {prompts: alpaca_eval, references: alpaca_eval, decoding: {...}, judge: null, leaderboard: null}
                                          # named sources: the hub, or evaluation.data_dir (symnoise.evaluation.sources)
    launcher: {kind: local}               # or {kind: accelerate, config_file: configs/accelerate/fsdp.yaml}
    pretrain: null                        # or a small model pretrained from scratch (see `PretrainSection`)
    expected: null                        # the papers' numbers; default GRID.expected.yaml beside the grid file

The alpha of a cell: 0 for method ``none`` (one cell whatever the alpha lists say), else the method's own
``alpha`` list, else ``axes.alpha``, else the dataset's ``alpha``, else the base config's ``noise.alpha``.
Every cell's train config is built and validated with `symnoise.train.config.validate_config` when the grid is
loaded, so a grid with a bad field fails before anything is trained. Relative paths are read from the
working directory, as in `symnoise train`.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .. import strict_yaml
from ..config import METHOD_ALIASES, METHODS, NoiseConfig
from ..evaluation.sources import is_alpaca_eval_name
from ..shipped_configs import resolve_config_path
from ..train.config import ConfigError, TrainConfig, apply_overrides, validate_config

LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_min_length=1)


class ModelEntry(_Section):
    name: str = Field(description="short name used in cell ids and tables")
    path: str = Field(description="hub name or local directory handed to model.name")
    params_b: float | None = Field(
        None,
        gt=0,
        description="parameters in billions, for --check's estimate; "
        "default: read from the name (7b, 6.7b, 13b)",
    )


class DatasetEntry(_Section):
    name: str = Field(description="short name used in cell ids (alpaca, evol-instruct, ...)")
    path: str = Field(description="local data file or hub dataset name (data.path)")
    format: Literal[
        "auto",
        "alpaca",
        "sharegpt",
        "evol-instruct",
        "openplatypus",
        "dolly",
        "messages",
        "prompt-completion",
    ] = "auto"
    template: Literal["alpaca", "vicuna", "chat", "plain"] | None = None
    turns: Literal["all", "first"] | None = Field(
        None, description="data.turns: first for the papers' single-turn ShareGPT protocol"
    )
    alpha: float | None = Field(None, ge=0, description="the papers' alpha for this dataset (5, 5, 10, 15)")
    fallback: Literal["synthetic"] | None = Field(
        None,
        description="synthetic: when the local file is missing, train on the built-in synthetic task set",
    )
    examples: int | None = Field(
        None,
        ge=1,
        description="training examples, for --check's estimate (default: "
        "counted in a local file; data.limit wins)",
    )
    mean_tokens: float | None = Field(
        None,
        gt=0,
        description="mean tokens per example, for --check's estimate "
        "(default: data.max_length, an upper bound)",
    )


def _non_negative(values: list[float] | None) -> list[float] | None:
    if values and any(v < 0 for v in values):
        raise ValueError("alphas must be >= 0")
    return values


class MethodEntry(_Section):
    name: str = Field(description="short name used in cell ids (neftune, gaussian-unmatched, ...)")
    method: str | None = Field(None, description="NoiseConfig.method; default: the name")
    alpha: list[float] | None = Field(
        None, min_length=1, description="this method's alphas (wins over axes.alpha)"
    )
    noise: dict[str, Any] = Field(default_factory=dict, description="further NoiseConfig fields")

    @field_validator("alpha")
    @classmethod
    def _alphas(cls, values: list[float] | None) -> list[float] | None:
        return _non_negative(values)

    @model_validator(mode="after")
    def _known(self) -> MethodEntry:
        method = self.method or self.name
        if method not in METHODS + tuple(METHOD_ALIASES):
            raise ValueError(
                f"unknown noise method {method!r}; choose one of "
                f"{', '.join(METHODS + tuple(METHOD_ALIASES))} (or set 'method' explicitly)"
            )
        for key in ("method", "alpha"):
            if key in self.noise:
                raise ValueError(f"noise.{key}: set it on the method entry, not in its noise fields")
        return self

    @property
    def noise_method(self) -> str:
        return self.method or self.name


class Axes(_Section):
    model: list[ModelEntry] = Field(
        default_factory=list, description="names/paths or {name, path}; empty: the base config's model"
    )
    dataset: list[DatasetEntry] = Field(default_factory=list, description="empty: the base config's data")
    method: list[MethodEntry] = Field(
        min_length=1, description="method names or {name, method, alpha, noise}"
    )
    alpha: list[float] | None = Field(None, min_length=1)
    seed: list[int] | None = Field(None, min_length=1, description="default: the base config's training.seed")
    pairs: list[tuple[str, str]] | None = Field(
        None,
        min_length=1,
        description="[model name, dataset name] pairs to keep (default: every pair), for "
        "tables that do not cross every model with every dataset",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_names(cls, values: Any) -> Any:
        if isinstance(values, list):
            return [{"name": _slug(v), "path": v} if isinstance(v, str) else v for v in values]
        return values

    @field_validator("method", mode="before")
    @classmethod
    def _method_names(cls, values: Any) -> Any:
        if isinstance(values, list):
            return [{"name": v} if isinstance(v, str) else v for v in values]
        return values

    @field_validator("alpha")
    @classmethod
    def _alphas(cls, values: list[float] | None) -> list[float] | None:
        return _non_negative(values)


class Decoding(_Section):
    """Generation settings (`symnoise.generation.DecodingSettings`); defaults are NEFTune's."""

    max_length: int = Field(1024, ge=1)
    max_new_tokens: int | None = Field(None, ge=0)
    repetition_penalty: float = Field(1.2, gt=0)
    batch_size: int = Field(8, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class JudgeSection(_Section):
    """The LLM judge. ``openai``: any OpenAI-compatible server serving ``annotator`` (an ``alpaca_eval``
    annotator: its prompt, parser and decoding, through symnoise's cached, resumable client, as `symnoise judge`);
    settings come from environment variables, named here, so no key is ever written into a grid file.
    ``hf``: a local causal LM (``model``). ``alpaca_eval``: the ``alpaca_eval`` package end to end (``annotators``:
    alpaca_eval_gpt4 is AlpacaEval 1's GPT-4 judge, chatgpt_fn the ChatGPT judge of NEFTune's scripts; its own
    client, no resume), keys as that package reads them."""

    kind: Literal["openai", "hf", "alpaca_eval"] = "openai"
    annotators: str | None = Field(
        None, description="alpaca_eval: the annotators config (alpaca_eval_gpt4, ...)"
    )
    annotator: str = Field(
        "alpaca_eval_gpt4",
        description="openai: the alpaca_eval annotator (alpaca_eval_gpt4, "
        "chatgpt_fn, weighted_alpaca_eval_gpt4_turbo, ...) or symnoise_pairwise_v1",
    )
    model: str | None = Field(
        None,
        description="hf: path or hub name; openai: served model (else model_env, else the annotator's model)",
    )
    model_env: str = "SYMNOISE_JUDGE_MODEL"
    base_url_env: str = "SYMNOISE_JUDGE_BASE_URL"
    default_base_url: str = "https://api.openai.com/v1"
    api_key_env: list[str] = Field(default_factory=lambda: ["SYMNOISE_JUDGE_API_KEY", "OPENAI_API_KEY"])
    workers: int = Field(4, ge=1)
    seed: int = 0
    timeout: float = Field(60.0, gt=0)
    limit: int | None = Field(None, ge=1, description="judge only the first N outputs")

    @model_validator(mode="after")
    def _hf_model(self) -> JudgeSection:
        if self.kind == "hf" and not self.model:
            raise ValueError("kind hf needs model (a local folder or hub name)")
        if (self.kind == "alpaca_eval") != bool(self.annotators):
            raise ValueError(
                "annotators is needed by kind alpaca_eval and only by it (e.g. alpaca_eval_gpt4)"
            )
        if self.kind != "openai" and "annotator" in self.model_fields_set:
            raise ValueError(f"annotator is read by kind openai only, not by kind {self.kind}")
        return self

    @field_validator("annotator")
    @classmethod
    def _known_annotator(cls, name: str, info: ValidationInfo) -> str:
        """For kind openai, an annotator `symnoise.evaluation.annotators` can load; without the alpaca_eval package
        it is not checked here and `symnoise grid --check` reports the missing package."""
        from ..evaluation import annotators as A

        if (
            info.data.get("kind", "openai") != "openai"
            or name == A.PAIRWISE_V1
            or importlib.util.find_spec("alpaca_eval") is None
        ):
            return name
        try:
            A.load_annotator(name)
        except A.AnnotatorError as error:
            raise ValueError(str(error)) from None
        return name


class LeaderboardSection(_Section):
    tasks: list[Literal["arc", "hellaswag", "mmlu"]] = Field(
        default_factory=lambda: ["arc", "hellaswag", "mmlu"], min_length=1
    )
    data_dir: str | None = Field(
        None,
        description="local copies (arc/, hellaswag/, mmlu/); default: "
        "evaluation.data_dir, else $SYMNOISE_DATA_DIR, else the harness's online tasks",
    )
    online: bool = Field(False, description="the harness's online tasks even when a data folder is named")
    limit: int | None = Field(None, ge=1, description="first N documents per task: quick checks only")
    batch_size: int = Field(1, ge=1)


class EvaluationSection(_Section):
    data_dir: str | None = Field(
        None,
        description="a local data folder laid out like the shared data folder; named sources (prompts, "
        "references, leaderboard) are read from it instead of the hub (symnoise grid --data-dir wins, "
        "$SYMNOISE_DATA_DIR is used when neither is set)",
    )
    prompts: str | None = Field(
        None,
        description="alpaca_eval (AlpacaEval 1's 805 prompts), or a JSON/JSONL file; none: no generation",
    )
    references: str | None = Field(
        None,
        description="alpaca_eval (text-davinci-003, AlpacaEval 1), alpaca_eval_2 (GPT-4 Turbo), or a file "
        "of reference outputs by instruction: for the judge and the held-out reference loss",
    )
    subset: int | None = Field(
        None, ge=1, description="use N prompts spread evenly over the file (quick runs)"
    )
    fallback: Literal["synthetic"] | None = Field(
        None,
        description="synthetic: missing prompts/references files are replaced by held-out synthetic tasks",
    )
    decoding: Decoding = Field(default_factory=Decoding)
    reference_loss: bool = Field(
        False, description="mean per-token loss of the reference outputs given the prompts"
    )
    stats_words: int | None = Field(
        None, ge=5, description="first N words for repetition; default: the papers' N"
    )
    judge: JudgeSection | None = None
    leaderboard: LeaderboardSection | None = None

    @model_validator(mode="after")
    def _needs(self) -> EvaluationSection:
        if self.judge and not (self.prompts and self.references):
            raise ValueError("judge needs both prompts (to generate) and references (to compare with)")
        if self.reference_loss and not self.references:
            raise ValueError("reference_loss needs references")
        wanted = annotator_references(self.judge)
        if wanted and is_alpaca_eval_name(self.references) and self.references != wanted:
            raise ValueError(
                f"references is {self.references} but judge.annotator {self.judge.annotator} compares "
                f"against {wanted}'s reference outputs: set references: {wanted}"
            )
        return self


def annotator_references(judge: JudgeSection | None) -> str | None:
    """The named reference source the openai judge's annotator was made for (``alpaca_eval``: text-davinci-003,
    ``alpaca_eval_2``: gpt4_1106_preview, per `symnoise.evaluation.references.reference_set_for`); None when
    there is no such judge or its annotator is symnoise's own."""
    from ..evaluation.annotators import PAIRWISE_V1
    from ..evaluation.references import reference_set_for

    if judge is None or judge.kind != "openai" or judge.annotator == PAIRWISE_V1:
        return None
    return reference_set_for(judge.annotator).source


class LauncherSection(_Section):
    kind: Literal["local", "accelerate"] = Field(
        "local",
        description="local: train in this process, cells one after another; accelerate: each cell's "
        "training is `accelerate launch --config_file F -m symnoise train CELL.yaml`",
    )
    config_file: str | None = Field(None, description="accelerate config (configs/accelerate/*.yaml)")
    num_processes: int | None = Field(
        None, ge=1, description="overrides the accelerate config's num_processes"
    )
    executable: str = Field("accelerate", description="the accelerate command")

    @field_validator("config_file")
    @classmethod
    def _shipped(cls, value: str | None) -> str | None:
        """A shipped accelerate config's name or clone path (configs/accelerate/fsdp.yaml) works from an install."""
        return None if value is None else str(resolve_config_path(value))

    @model_validator(mode="after")
    def _config(self) -> LauncherSection:
        if self.kind == "accelerate" and not self.config_file:
            raise ValueError("kind accelerate needs config_file")
        if self.kind == "local" and (self.config_file or self.num_processes):
            raise ValueError("config_file and num_processes apply only to kind accelerate")
        return self


class PretrainSection(_Section):
    """A small Llama-style model pretrained from scratch on local text, used as the grid's only model.

    The tokenizer (byte-level BPE) is trained on the same text. ``text`` is a JSON/JSONL file of instruction
    records (instruction, input, output joined as plain text, no template); records before ``skip_first`` are
    left out, so the fine-tuning examples (``data.limit`` first records) are not pretraining text.
    """

    name: str = Field("tiny-llama", description="model name in cell ids")
    text: str | None = None
    skip_first: int = Field(0, ge=0)
    fallback: Literal["synthetic"] | None = None
    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    block_size: int = Field(256, ge=16)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _source(self) -> PretrainSection:
        if not self.text and not self.fallback:
            raise ValueError("needs text (a local file) or fallback: synthetic")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of heads ({self.heads})")
        return self


class GridSpec(_Section):
    name: str | None = None
    output_dir: str
    base: str | dict[str, Any] = Field(description="a `symnoise train` config file, or the mapping itself")
    overrides: list[str] = Field(default_factory=list)
    axes: Axes
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    launcher: LauncherSection = Field(default_factory=LauncherSection)
    pretrain: PretrainSection | None = None
    expected: str | None = Field(
        None,
        description="the papers' numbers for `symnoise report` (default: "
        "GRID.expected.yaml beside the grid file, when there is one)",
    )

    @model_validator(mode="after")
    def _one_model_source(self) -> GridSpec:
        if self.pretrain and self.axes.model:
            raise ValueError(
                "axes.model must be empty when pretrain is set (the pretrained model is the model)"
            )
        return self


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


@dataclass(frozen=True)
class Grid:
    """A validated grid: the spec, where it came from, and every cell."""

    spec: GridSpec
    source: str
    cells: list[Cell]

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir)


# ------------------------------------------------------------------------------------------------- loading


def _slug(text: str) -> str:
    """A file-name-safe short name: the last path component, odd characters replaced."""
    last = Path(str(text).rstrip("/")).name or str(text)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-") or "model"


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid grid"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = (
            "unknown field"
            if item["type"] == "extra_forbidden"
            else item["msg"].removeprefix("Value error, ")
        )
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _read_yaml(path: Path, what: str) -> Any:
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
        data = _read_yaml(resolve_config_path(spec.base), "base config (field base)")
        if not isinstance(data, dict):
            raise GridError(
                f"{source}: base: {spec.base} must hold a mapping with model, data, noise, training"
            )
    try:
        return apply_overrides(data, list(spec.overrides))
    except ConfigError as error:
        raise GridError(f"{source}: overrides: {error}") from None


def _alphas(method: MethodEntry, axes: Axes, dataset_alpha: float | None, base_alpha: float) -> list[float]:
    if NoiseConfig(method.noise_method, 0.0).method == "none":
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
        model_name = model.name if model else _slug((base.get("model") or {}).get("name", "model"))
        for entry, dataset in ((d, resolve_dataset(d, spec) if d else None) for d in datasets):
            dataset_name = (
                dataset.name
                if dataset
                else _slug(Path(str((base.get("data") or {}).get("path", "data"))).stem)
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
                        run_dir = Path(spec.output_dir) / "cells" / ident
                        data = _cell_data(base, model, dataset, method, alpha, seed, run_dir)
                        try:
                            config = validate_config(data, source=f"{source}: cell {ident}")
                        except ConfigError as error:
                            raise GridError(str(error)) from None
                        cells.append(Cell(ident, model_name, dataset_name, method.name, alpha, seed, config))
    return cells


def synthetic_dir(spec: GridSpec) -> Path:
    """Where the synthetic fallback data (train.jsonl, eval.jsonl) is written."""
    return Path(spec.output_dir) / "synthetic"


def resolve_dataset(dataset: DatasetEntry, spec: GridSpec) -> DatasetEntry:
    """The dataset entry itself, or, when its file is missing and the fallback is synthetic, the synthetic set
    (named "synthetic", so no table calls it by the missing dataset's name)."""
    if dataset.fallback != "synthetic" or Path(dataset.path).is_file():
        return dataset
    return dataset.model_copy(
        update={
            "name": "synthetic",
            "path": str(synthetic_dir(spec) / "train.jsonl"),
            "format": "alpaca",
            "template": "alpaca",
        }
    )


def _check_files(spec: GridSpec, source: str) -> None:
    """Local files the grid names must exist, unless a synthetic fallback is configured for them."""
    problems = []
    evaluation = spec.evaluation
    for name in ("prompts", "references"):
        value = getattr(evaluation, name)
        if value and not is_alpaca_eval_name(value) and not Path(value).is_file() and not evaluation.fallback:
            problems.append(f"evaluation.{name}: {value} not found")
    for i, dataset in enumerate(spec.axes.dataset):
        remote = dataset.path.startswith("hf://")
        local = not remote and (dataset.path.endswith(LOCAL_DATA_SUFFIXES) or Path(dataset.path).exists())
        if local and not Path(dataset.path).is_file() and not dataset.fallback:
            problems.append(f"axes.dataset.{i}.path: {dataset.path} not found")
    if spec.launcher.config_file and not Path(spec.launcher.config_file).is_file():
        problems.append(f"launcher.config_file: {spec.launcher.config_file} not found")
    if (
        spec.pretrain
        and spec.pretrain.text
        and not Path(spec.pretrain.text).is_file()
        and not spec.pretrain.fallback
    ):
        problems.append(f"pretrain.text: {spec.pretrain.text} not found")
    if problems:
        raise GridError("\n".join([f"{source}: invalid grid"] + [f"  {p}" for p in problems]))


def validate_grid(data: Any, source: str = "grid") -> Grid:
    """Check a grid mapping completely (fields, files, every cell's train config); raises `GridError`."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: the top level must be a mapping with output_dir, base, axes, evaluation")
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as error:
        raise GridError(_format_errors(error, source)) from None
    _check_files(spec, source)
    pretrained = pretrained_model_dir(spec) if spec.pretrain else None
    return Grid(spec, source, expand_cells(spec, source, pretrained))


def load_grid(path: str | Path, data_dir: str | Path | None = None) -> Grid:
    """Read and validate a grid YAML file; ``data_dir`` (the ``--data-dir`` flag) replaces evaluation.data_dir."""
    path = Path(path)
    data = _read_yaml(path, "grid file")
    if data_dir is not None and isinstance(data, dict):
        data.setdefault("evaluation", {})["data_dir"] = str(data_dir)
    return validate_grid(data, source=str(path))


def expected_file(grid: Grid) -> Path | None:
    """The grid's companion file of the papers' numbers: ``expected``, else GRID.expected.yaml if it exists."""
    if grid.spec.expected:
        return Path(grid.spec.expected)
    source = Path(grid.source)
    beside = source.with_name(source.stem + ".expected.yaml")
    return beside if source.suffix in (".yaml", ".yml") and beside.is_file() else None


def pretrained_model_dir(spec: GridSpec) -> Path:
    """Where the `pretrain` section's model is written (and read by every cell)."""
    return Path(spec.output_dir) / "pretrain" / "model"
