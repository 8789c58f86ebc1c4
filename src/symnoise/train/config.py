"""The typed configuration of `symnoise train`: YAML plus dotted overrides, validated before anything is loaded.

A config file has five sections, each documented field by field below: ``model``, ``data``, ``noise``
(`symnoise.NoiseConfig`), ``lora`` and ``training``. Overrides on the command line use the same dotted
paths: ``noise.alpha=10 training.learning_rate=1e-4 lora.enabled=true``; values are parsed as YAML scalars.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import strict_yaml
from ..config import NoiseConfig
from ..data.conversations import TURN_MODES
from ..data.file_kinds import FILE_SUFFIXES, SAVED_DATASET
from ..data.formats import BAD_ROW_POLICIES, FORMATS
from ..data.templates import TEMPLATES
from ..dtypes import DTYPES


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and field."""


class _Section(BaseModel):
    # No field accepts NaN or infinity, and no text field is meaningful when empty.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, str_min_length=1)


# Attention implementations asked for by name: transformers' own. flex_attention is torch's FlexAttention, whose
# block mask skips the blocks between packed sequences (`data.packing`) that SDPA and eager compute and mask out.
ATTENTION_IMPLEMENTATIONS = (
    "eager",
    "sdpa",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
)
# Any other value names a hub kernel, in transformers' syntax: ORG/REPO, then optionally @REVISION and :FUNCTION
# (kernels-community/flash-attn2, kernels-community/vllm-flash-attn3@main). No blanks: a typo is not a repo.
HUB_KERNEL = re.compile(r"[^/:@\s]+/[^/:@\s]+(@[^/:@\s]+)?(:[^/:@\s]+)?")


def is_hub_kernel(attention: str | None) -> bool:
    """Whether ``model.attn_implementation`` names an attention kernel that transformers fetches from the hub."""
    return attention is not None and HUB_KERNEL.fullmatch(attention) is not None


class ModelSection(_Section):
    name: str = Field(description="Hugging Face hub name (meta-llama/Llama-2-7b-hf) or local directory")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal[DTYPES] = Field(
        "auto",
        description="dtype of the weights that are not trained (the base model under LoRA/QLoRA) and of "
        "training.pure_bf16 runs: auto = bfloat16 when training.precision resolves to bf16, else float32. Full "
        "fine-tuning keeps float32 master weights (with bf16 autocast) unless training.pure_bf16 is set",
    )
    attn_implementation: str | None = Field(
        None,
        description="attention: sdpa (transformers' default), eager, flex_attention (torch's FlexAttention; its "
        "block mask keeps packed sequences apart without computing the blocks between them; trains on CUDA only), "
        "flash_attention_2 / flash_attention_3 / flash_attention_4 (the flash-attn packages: flash-attn, flash-attn 3, "
        "flash-attn-4; CUDA), or a hub kernel "
        "ORG/REPO[@REVISION][:FUNCTION] such as kernels-community/flash-attn2 (needs the kernels package; fetched "
        "from the hub when the model loads, whatever model.use_kernels says)",
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the model; off unless asked")
    use_kernels: bool = Field(
        False,
        description="let transformers swap layers for kernels fetched from the hub (the `kernels` package; "
        "network, and numerics other than the tested path); off unless asked",
    )
    license: str | None = Field(
        None,
        description="licence id (apache-2.0, llama3.2, ...) for the model card when the base model's own card "
        "states none or cannot be read; by default the card carries the base model's licence, read from its card",
    )

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, value: str | None) -> str | None:
        if value is None or value in ATTENTION_IMPLEMENTATIONS or is_hub_kernel(value):
            return value
        raise ValueError(
            f"unknown attention {value!r}; use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, or a hub kernel "
            "ORG/REPO[@REVISION][:FUNCTION] (e.g. kernels-community/flash-attn2)"
        )


# The values `symnoise.data` implements, declared there once: a format or template added there is accepted here
# (and by the grid file, which reads these types).
DataFormat = Literal[("auto", *FORMATS)]
DataTemplate = Literal[TEMPLATES]
TurnMode = Literal[TURN_MODES]
BadRowPolicy = Literal[BAD_ROW_POLICIES]


DATA_PATH = (
    f"a local file ({', '.join(FILE_SUFFIXES)}), {SAVED_DATASET}, or a hub dataset name (tatsu-lab/alpaca)"
)


class DatasetEntry(_Section):
    """One source of a mixture (``data.datasets``); unset fields take the ``data`` section's value."""

    path: str = Field(description=DATA_PATH)
    format: DataFormat | None = None
    template: DataTemplate | None = None
    split: str | None = None
    turns: TurnMode | None = None
    weight: float | None = Field(
        None, gt=0, description="take every example this many times (0.5: a random half, 2: twice); default 1"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N examples of this source")

    @model_validator(mode="after")
    def _weight_or_limit(self) -> DatasetEntry:
        if self.weight is not None and self.limit is not None:
            raise ValueError("set weight or limit, not both")
        return self


class DataSection(_Section):
    path: str | None = Field(None, description=f"{DATA_PATH}; or give datasets")
    datasets: list[DatasetEntry] | None = Field(
        None, min_length=1, description="a mixture of sources, each read, checked and reported on its own"
    )
    format: DataFormat = "auto"
    template: DataTemplate | None = Field(
        None,
        description="prompt template; default: vicuna for conversations, alpaca for instruction data, plain "
        "for text prompt/completion",
    )
    turns: TurnMode = Field(
        "all",
        description="train on every assistant turn of a conversation, or on the first one only (the "
        "papers' single-turn ShareGPT protocol)",
    )
    split: str = "train"
    max_length: int = Field(512, ge=8)
    on_bad_row: BadRowPolicy = "error"
    limit: int | None = Field(None, ge=1, description="use only the first N examples")
    eval_path: str | None = Field(None, description="held-out data in the same format, for eval loss")
    cache: bool = Field(
        True,
        description="keep tokenised local files in $SYMNOISE_CACHE (~/.cache/symnoise), "
        "keyed by file content, settings and tokenizer",
    )
    packing: Literal["none", "rows", "padding_free"] = Field(
        "none",
        description="rows: each batch packed into rows of at most max_length tokens with position-id "
        "resets (attention kept per sequence, almost no padding; the fast layout for SDPA and eager attention, "
        "exact under FlashAttention too through the batch's cu_seq_lens); "
        "padding_free: each batch is one row of concatenated sequences (no padding; for FlashAttention's varlen "
        "kernels or flex_attention's block mask, which skip the blocks between sequences, since SDPA and eager "
        "build a dense mask over the whole row); none: pad to the longest",
    )
    group_by_length: bool = Field(False, description="batch examples of similar length (less padding)")

    @property
    def source_label(self) -> str:
        """The data source(s) in one line, for the model card and the run file."""
        return self.path if self.datasets is None else " + ".join(entry.path for entry in self.datasets)

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.path is None) == (self.datasets is None):
            raise ValueError("give either path (one source) or datasets (a mixture), not both or neither")
        if self.datasets is not None and self.limit is not None:
            raise ValueError("limit applies to path; with datasets, set limit on each entry")
        return self


class LoraSection(_Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    quantize_4bit: bool = Field(
        False, description="QLoRA: 4-bit NF4 base weights (needs CUDA and bitsandbytes)"
    )


class WandbSection(_Section):
    """Weights & Biases run settings; each falls back to its usual environment variable when not given."""

    project: str | None = Field(None, description="W&B project (else $WANDB_PROJECT, else 'symnoise')")
    entity: str | None = Field(None, description="W&B team or user (else $WANDB_ENTITY)")
    tags: list[str] | None = Field(None, description="run tags (else $WANDB_TAGS, comma-separated)")
    group: str | None = Field(None, description="group runs together (else $WANDB_RUN_GROUP)")


class TrainingSection(_Section):
    output_dir: str = Field(description="run directory: checkpoints, final model, config, metrics")
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run the epochs)")
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    per_device_batch_size: int = Field(4, ge=1)
    effective_batch_size: int = Field(128, ge=1, description="examples per optimizer step over all devices")
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    trained_logits_only: bool = Field(
        True,
        description="compute the LM head only where a next token is trained (the response): the same loss "
        "with less compute; used when the model takes per-row logits_to_keep (transformers causal LMs do)",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto: bf16 on GPUs that compute in it natively (compute capability 8.0 and later: A100, "
        "H100, RTX 30xx and newer), fp32 otherwise (T4 and V100 only emulate bf16)",
    )
    pure_bf16: bool = Field(
        False,
        description="full fine-tuning only: train bfloat16 weights directly, with no float32 master copy. "
        "Saves half the weight and optimizer-state memory, but an update smaller than bf16's resolution (1/256 of "
        "a weight) is lost: at lr 5e-5 one AdamW step leaves about half of the elements unchanged. Off: float32 "
        "master weights, bf16 autocast (what the papers' FSDP mixed precision does)",
    )
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(500, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    save_model: bool = Field(
        True,
        description="false: write no model weights, neither checkpoints (every save_steps and at the last step) "
        "nor the final model, for benchmarks and trial runs; the run directory still gets its config, metrics and "
        "train_summary.json. Such a run has nothing to resume from, generate with or upload (a preemption notice "
        "still writes its checkpoint, so that the run can go on)",
    )
    eval_steps: int | None = Field(None, ge=1)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu"] = Field("auto", description="cpu forces CPU training even with a GPU")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop the run (weights stay finite) or skip that step"
    )
    run_name: str | None = Field(
        None, description="run name for trackers (W&B); default: the output_dir name"
    )
    wandb: WandbSection | None = Field(
        None, description="W&B project, entity, tags, group; needs report_to: [wandb]"
    )
    push_to_hub: bool = Field(
        False, description="upload the final model, tokenizer and model card to the hub"
    )
    hub_model_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$",
        description="hub repository (user/name); default: the output_dir name under the logged-in account",
    )
    hub_private: bool = Field(True, description="create the hub repository private")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="any other transformers.TrainingArguments field (optim, adam_beta2, "
        "torch_compile, ...), checked against the installed transformers",
    )

    @model_validator(mode="before")
    @classmethod
    def _hf_aliases(cls, data: Any) -> Any:
        from .trainer_args import rename_aliases

        return rename_aliases(data)

    @field_validator("trainer_args")
    @classmethod
    def _trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .trainer_args import check_trainer_args

        return check_trainer_args(value)

    @model_validator(mode="after")
    def _wandb_needs_report_to(self) -> TrainingSection:
        if self.wandb is not None and "wandb" not in self.report_to:
            raise ValueError("wandb is set but report_to does not include wandb (report_to: [wandb])")
        return self

    @model_validator(mode="after")
    def _push_needs_a_model(self) -> TrainingSection:
        if self.push_to_hub and not self.save_model:
            raise ValueError("push_to_hub uploads the final model, which save_model: false does not write")
        return self

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"must be -1 (train for training.epochs) or at least 1; got {value}")
        return value


class TrainConfig(_Section):
    model: ModelSection
    data: DataSection
    noise: NoiseConfig = Field(default_factory=lambda: NoiseConfig("symnoise", 5.0))
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @field_validator("noise", mode="before")
    @classmethod
    def _noise(cls, value: Any) -> NoiseConfig:
        if isinstance(value, NoiseConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping of NoiseConfig fields, got {value!r}")
        try:
            return NoiseConfig.from_dict(value)
        except (TypeError, ValueError) as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.lora.quantize_4bit and not self.lora.enabled:
            raise ValueError(
                "lora.quantize_4bit needs lora.enabled: true (QLoRA trains adapters on a 4-bit base)"
            )
        if self.training.pure_bf16 and self.lora.enabled:
            raise ValueError(
                "training.pure_bf16 is for full fine-tuning; LoRA adapters are kept in float32 and "
                "the base model's dtype is model.dtype"
            )
        if self.training.pure_bf16 and self.model.dtype not in ("auto", "bfloat16"):
            raise ValueError(
                f"training.pure_bf16 trains bfloat16 weights; model.dtype={self.model.dtype} "
                "contradicts it (use auto or bfloat16)"
            )
        if (
            not self.lora.enabled
            and not self.training.pure_bf16
            and self.model.dtype in ("bfloat16", "float16")
        ):
            raise ValueError(
                f"model.dtype={self.model.dtype} with full fine-tuning: the trained weights are kept "
                "in float32 (master weights, with bf16/fp16 autocast); set training.pure_bf16: true to "
                "train bfloat16 weights directly, or model.dtype: auto"
            )
        per_step = self.training.per_device_batch_size
        if self.training.effective_batch_size % per_step:
            raise ValueError(
                f"training.effective_batch_size ({self.training.effective_batch_size}) must be a "
                f"multiple of training.per_device_batch_size ({per_step})"
            )
        return self

    def resolved_template(self, detected_format: str) -> str:
        from ..data import default_template

        return self.data.template or default_template(detected_format)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="python", exclude={"noise"})
        return {
            "model": data["model"],
            "data": data["data"],
            "noise": self.noise.to_dict(),
            "lora": data["lora"],
            "training": data["training"],
        }


def parse_override(text: str) -> tuple[list[str], Any]:
    """``noise.alpha=10`` -> (["noise", "alpha"], 10). The value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.field=value (e.g. noise.alpha=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _fields_at(loc: tuple) -> list[str]:
    """The field names a config section at ``loc`` (a path of names and list indices) accepts."""
    model: Any = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *get_args(annotation)]
        for arg in list(candidates):
            candidates += get_args(arg)
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(loc: tuple) -> str:
    """``; did you mean NAME?`` for the valid field nearest to an unknown one, else the valid names."""
    fields = _fields_at(loc[:-1])
    if not fields:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; allowed: {', '.join(fields)}"


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field" + _did_you_mean(item["loc"])
        elif item["type"] in ("bool_type", "bool_parsing"):
            message += " (true or false)"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from nothing), apply dotted overrides, validate; raises `ConfigError`."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = strict_yaml.load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping with model, data, noise, lora, training"
            )
        data = loaded or {}
    return validate_config(apply_overrides(data, list(overrides)), source)
