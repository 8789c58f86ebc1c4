"""The sections of a grid file (`symnoise grid`), each a model whose fields are documented next to their types.

A grid file has these sections::

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
                                          # or {kind: slurm, partition: gpu, time: 1-00:00:00, gpus_per_node: 8}
    pretrain: null                        # or a small model pretrained from scratch (see `PretrainSection`)
    expected: null                        # the papers' numbers; default GRID.expected.yaml beside the grid file

The values a grid shares with other commands are declared once where they are implemented and read here: data
formats and templates (`symnoise.data`), noise methods (`symnoise.methods`), decoding settings
(`symnoise.generation.DecodingSettings`). How the axes become cells is `symnoise.grid.cells`; loading and
checking a grid file is `symnoise.grid.spec`.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import MISSING
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..dtypes import DTYPES
from ..evaluation.judge_clients import JUDGE_KINDS
from ..evaluation.leaderboard_tasks import LEADERBOARD_TASKS
from ..evaluation.sources import is_alpaca_eval_name
from ..generation import DecodingSettings
from ..methods import METHOD_ALIASES, METHODS
from ..shipped_configs import resolve_config_path
from ..train.config import DataFormat, DataTemplate, TurnMode
from .slurm import SlurmFields


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file and the field."""


def slug(text: str) -> str:
    """A file-name-safe short name: the last path component, odd characters replaced."""
    last = Path(str(text).rstrip("/")).name or str(text)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-") or "model"


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
    format: DataFormat = "auto"
    template: DataTemplate | None = None
    turns: TurnMode | None = Field(
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
        if method.lower() not in METHODS + tuple(METHOD_ALIASES):
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
            return [{"name": slug(v), "path": v} if isinstance(v, str) else v for v in values]
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


# The bounds the grid file checks on `DecodingSettings`' fields (the dataclass checks the same ones when it is
# built); checked here, a bad value is reported against its own field (evaluation.decoding.max_length).
DECODING_BOUNDS: dict[str, dict[str, float]] = {
    "max_length": {"ge": 1},
    "max_new_tokens": {"ge": 0},
    "repetition_penalty": {"gt": 0},
    "batch_size": {"ge": 1},
}


def _settings_fields() -> dict[str, Any]:
    """`DecodingSettings`' fields as pydantic field definitions: the same names, types and defaults."""
    hints = get_type_hints(DecodingSettings)
    definitions = {}
    for field in dataclass_fields(DecodingSettings):
        bounds = DECODING_BOUNDS.get(field.name, {})
        if field.default_factory is not MISSING:
            definition = Field(default_factory=field.default_factory, **bounds)
        else:
            definition = Field(... if field.default is MISSING else field.default, **bounds)
        definitions[field.name] = (hints[field.name], definition)
    return definitions


_DecodingSettingsFields = create_model("_DecodingSettingsFields", __base__=_Section, **_settings_fields())


class Decoding(_DecodingSettingsFields):
    """Generation settings: `symnoise.generation.DecodingSettings`' fields (defaults are NEFTune's), and the
    device and dtype the cell's model is loaded with."""

    device: str = "auto"
    dtype: Literal[DTYPES] = "auto"

    def settings(self) -> DecodingSettings:
        """The `DecodingSettings` these fields describe."""
        return DecodingSettings(**{f.name: getattr(self, f.name) for f in dataclass_fields(DecodingSettings)})


class JudgeSection(_Section):
    """The LLM judge. ``openai``: any OpenAI-compatible server serving ``annotator`` (an ``alpaca_eval``
    annotator: its prompt, parser and decoding, through symnoise's cached, resumable client, as `symnoise judge`);
    settings come from environment variables, named here, so no key is ever written into a grid file.
    ``hf``: a local causal LM (``model``). ``alpaca_eval``: the ``alpaca_eval`` package end to end (``annotators``:
    alpaca_eval_gpt4 is AlpacaEval 1's GPT-4 judge, chatgpt_fn the ChatGPT judge of NEFTune's scripts; its own
    client, no resume), keys as that package reads them."""

    kind: Literal[JUDGE_KINDS] = "openai"
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


LEADERBOARD_TASK_NAMES = tuple(LEADERBOARD_TASKS)


class LeaderboardSection(_Section):
    tasks: list[Literal[LEADERBOARD_TASK_NAMES]] = Field(
        default_factory=lambda: list(LEADERBOARD_TASK_NAMES), min_length=1
    )
    data_dir: str | None = Field(
        None,
        description="local copies (arc/, hellaswag/, mmlu/); default: "
        "evaluation.data_dir, else $SYMNOISE_DATA_DIR, else the harness's online tasks",
    )
    online: bool = Field(False, description="the harness's online tasks even when a data folder is named")
    limit: int | None = Field(None, ge=1, description="first N documents per task: quick checks only")
    batch_size: int = Field(1, ge=1)


class AnalyzeSection(_Section):
    """`symnoise analyze` as a grid stage: the mechanism measured at each cell's final model (gradient variance
    across noise draws, curvature and the Hessian trace), on training data and, when set, held out on the
    references."""

    examples: int = Field(16, ge=1, description="training (and held-out) examples per measurement")
    draws: int = Field(
        16, ge=4, description="noise draws per estimate (even; pairs of draws give the intervals)"
    )
    probes: int = Field(16, ge=2, description="Rademacher probes of the Hutchinson trace")
    alphas: list[float] = Field(
        default_factory=lambda: [5.0], min_length=1, description="alphas of the directional sweep"
    )
    batch_size: int = Field(8, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _even_draws(self) -> AnalyzeSection:
        if self.draws % 2:
            raise ValueError(
                f"analyze.draws must be even (pairs of draws give the intervals), got {self.draws}"
            )
        if any(alpha <= 0 for alpha in self.alphas):
            raise ValueError("analyze.alphas must be positive")
        return self


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
    analyze: AnalyzeSection | None = None

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


class LauncherSection(SlurmFields, _Section):
    kind: Literal["local", "accelerate", "slurm"] = Field(
        "local",
        description="local: train in this process, cells one after another; accelerate: each cell's "
        "training is `accelerate launch --config_file F -m symnoise train CELL.yaml`; slurm: every cell is a "
        "job of a Slurm array (the Slurm fields: `symnoise.grid.slurm.SlurmFields`)",
    )
    config_file: str | None = Field(
        None, description="accelerate config (configs/accelerate/*.yaml); with slurm, how each node launches"
    )
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
        slurm_fields = sorted(set(SlurmFields.model_fields) & self.model_fields_set)
        if self.kind != "slurm" and slurm_fields:
            raise ValueError(f"{', '.join(slurm_fields)}: Slurm settings apply only to kind slurm")
        if self.kind == "slurm":
            if self.num_processes:
                raise ValueError("kind slurm: set nodes and processes_per_node, not num_processes")
            problems = self.slurm_problems()
            if problems:
                raise ValueError("; ".join(problems))
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
