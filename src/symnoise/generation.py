"""Batched, resumable generation of AlpacaEval ``model_outputs.json`` files.

Prompts are rendered with the template the model was trained with, sorted by token length and generated in
left-padded batches with the KV cache. Decoding follows the NEFTune evaluation (greedy, repetition penalty
1.2, at most 1024 tokens of prompt plus response), and each prompt gets exactly the tokens and the output
it would get if generated alone: the repetition penalty ignores each row's padding and every row stops at
its own budget. Finished prompts go to a JSONL sidecar after every batch, so a killed run resumes where it
stopped; the final JSON is written atomically, in the order of the prompt file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import TEMPLATES, Example, render_prompt
from .data.tokenize import special_prefix
from .dtypes import check_dtype, gpu_half_dtype
from .files import append_json_lines, read_json, read_placed_json_rows
from .layout import RUN_INFO, RunLayout
from .quiet import progress_bar


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file, the row and the field."""


@dataclass(frozen=True)
class Prompt:
    """One row of an AlpacaEval-style prompt file."""

    instruction: str
    dataset: str = ""
    input: str = ""


@dataclass(frozen=True)
class DecodingSettings:
    """How outputs are decoded; the defaults are the NEFTune AlpacaEval settings.

    Attributes:
        max_length: limit on prompt plus new tokens, per prompt (NEFTune: 1024).
        max_new_tokens: optional further limit on new tokens alone.
        repetition_penalty: CTRL-style penalty on every token already in the prompt or output (NEFTune: 1.2).
        batch_size: prompts per forward; changes speed, not outputs.
    """

    max_length: int = 1024
    max_new_tokens: int | None = None
    repetition_penalty: float = 1.2
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("max_length and batch_size must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")

    def budget(self, prompt_length: int) -> int:
        """New tokens allowed for a prompt of ``prompt_length`` tokens (0 when the prompt fills the limit)."""
        budget = max(self.max_length - prompt_length, 0)
        return budget if self.max_new_tokens is None else min(budget, self.max_new_tokens)


@dataclass
class GenerationStats:
    """What one call generated: prompts, new tokens (up to and including EOS) and wall-clock seconds."""

    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    resumed: int = 0
    no_room: int = 0  # prompts that alone reach max_length: their output is empty

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------- input files


def _field(path: Path, where: str, row: dict, name: str, required: bool) -> str:
    if name not in row:
        if required:
            raise PromptFileError(f"{path}: {where}: missing field {name!r}")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise PromptFileError(f"{path}: {where}: field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise PromptFileError(f"{path}: {where}: field {name!r} is empty")
    return value


def load_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a JSON list or JSONL file of ``{instruction, dataset, input?}`` objects, validated.

    Raises :class:`PromptFileError` naming the file, row and field of the first problem.
    """
    path = Path(path)
    prompts = []
    for where, row in read_placed_json_rows(path, PromptFileError, what="prompts"):
        if not isinstance(row, dict):
            raise PromptFileError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
        prompts.append(
            Prompt(
                instruction=_field(path, where, row, "instruction", required=True),
                dataset=_field(path, where, row, "dataset", required=False),
                input=_field(path, where, row, "input", required=False),
            )
        )
    if not prompts:
        raise PromptFileError(f"{path}: no prompts in file")
    return prompts


def read_run_config(model: str | Path) -> dict | None:
    """The ``symnoise_run.json`` written by ``symnoise train`` into a run directory, or None if there is none."""
    path = RunLayout(model).run_info
    return read_json(path, error=ValueError) if path.is_file() else None


def resolve_template(model: str | Path, template: str | None) -> str:
    """The prompt template: the one given, else the one the run was trained with; an error if neither exists."""
    run_config = read_run_config(model)
    trained = run_config.get("template") if run_config else None
    chosen = template or trained
    if chosen is None:
        raise ValueError(
            f"no {RUN_INFO} in {model!s} to say which prompt template the model was trained with; "
            f"pass the template explicitly (one of {', '.join(TEMPLATES)})"
        )
    if chosen not in TEMPLATES:
        raise ValueError(f"unknown template {chosen!r}; choose one of {', '.join(TEMPLATES)}")
    if trained and template and template != trained:
        print(
            f"warning: using template {template!r}, but the model was trained with {trained!r}",
            file=sys.stderr,
        )
    return chosen


# ---------------------------------------------------------------------------------------------- model


def resolve_device(device: str) -> str:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """``auto`` is bfloat16 on a GPU that computes in it natively (compute capability 8.0 and later), float16 on
    other GPUs and float32 on the CPU."""
    import torch

    if check_dtype(dtype) != "auto":
        return getattr(torch, dtype)
    if not device.startswith("cuda"):
        return torch.float32
    return getattr(torch, gpu_half_dtype())


def load_model_and_tokenizer(
    model: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
):
    """A causal LM (safetensors preferred by transformers) and its tokenizer, from a directory or a hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(  # hub kernels off: transformers 5.2x turns them on by default
        str(model),
        dtype=resolve_dtype(dtype, device),
        device_map=device,  # straight onto the device: a 7B model never passes through 14 GB of host memory
        trust_remote_code=trust_remote_code,
        use_kernels=False,
    )
    return lm.eval(), tokenizer


# ---------------------------------------------------------------------------------------------- prompts


def prompt_token_ids(tokenizer, prompts: Sequence[Prompt], template: str) -> list[list[int]]:
    """Token ids of each rendered prompt, exactly as training tokenises prompts.

    As in :func:`symnoise.data.tokenize_examples`: the tokenizer's BOS prefix, then the prompt without added
    special tokens; special-token strings are parsed only in the chat template, which writes its own BOS.
    """
    is_chat = template == "chat"
    prefix = [] if is_chat else special_prefix(tokenizer)
    texts = [
        render_prompt(Example(p.instruction, p.input, "", p.dataset), template, tokenizer) for p in prompts
    ]
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=not is_chat)["input_ids"]
    return [prefix + list(ids) for ids in encoded]


def plan_batches(lengths: Sequence[int], pending: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of prompt indices, longest prompts first, so each batch holds prompts of similar length."""
    order = sorted(pending, key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and any listed in the generation config."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and any listed in the model's generation config."""
    return eos_token_ids(model.generation_config, tokenizer)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device):
    """input_ids, attention_mask and per-row pad counts of left-padded rows."""
    import torch

    width = max(len(row) for row in rows)
    pads = torch.tensor([width - len(row) for row in rows])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row) :] = 1
    return ids.to(device), mask.to(device), pads


def _row_budget_criterion(start: int, budgets: Sequence[int]):
    """A stopping criterion that marks each row done once it has generated its own number of tokens."""
    import torch
    from transformers import StoppingCriteria

    class RowBudget(StoppingCriteria):
        def __init__(self) -> None:
            self.budgets = torch.tensor(budgets)

        def __call__(self, input_ids, scores, **kwargs):
            self.budgets = self.budgets.to(input_ids.device)
            return (input_ids.shape[1] - start) >= self.budgets

    return RowBudget()


def cut_output(new_ids: Sequence[int], eos_ids: Sequence[int], budget: int) -> list[int]:
    """The generated ids up to and including the first EOS, and never more than ``budget``."""
    kept = []
    for token in list(new_ids)[:budget]:
        kept.append(token)
        if token in eos_ids:
            break
    return kept


def generate_batch(
    model, tokenizer, rows: Sequence[Sequence[int]], settings: DecodingSettings
) -> list[list[int]]:
    """Greedy continuations (ids, EOS included when reached) of prompt id rows, generated as one left-padded batch."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    budgets = [settings.budget(len(row)) for row in rows]
    if max(budgets) == 0:
        return [[] for _ in rows]
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    ids, mask, pads = _left_pad(rows, pad_id, model.device)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max(budgets),
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        repetition_penalty=1.0,  # explicit, so a hub model's own default is not applied twice
    )
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty), pads))
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=[_row_budget_criterion(ids.shape[1], budgets)],
        )
    new = out[:, ids.shape[1] :].tolist()
    return [cut_output(row, eos_ids, budget) for row, budget in zip(new, budgets, strict=True)]


def decode_output(tokenizer, ids: Sequence[int]) -> str:
    """The response text: special tokens dropped, surrounding whitespace stripped."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------- sidecar


def sidecar_path(output: str | Path) -> Path:
    """Where progress is kept: ``model_outputs.json`` -> ``model_outputs.partial.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + ".partial.jsonl")


def _drop_torn_tail(path: Path) -> bytes:
    """The file's complete lines; a last line without newline (a write cut short) is removed from disk too."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    return complete


def read_sidecar(path: Path, header: dict, prompts: Sequence[Prompt]) -> dict[int, dict]:
    """Finished records by prompt index, after checking the sidecar was made with the same settings and prompts."""
    if not path.is_file():
        return {}
    lines = _drop_torn_tail(path).decode("utf-8").splitlines()
    if not lines:
        return {}
    if json.loads(lines[0]).get("header") != header:
        raise ValueError(
            f"{path} was written with other settings ({lines[0]}); expected {json.dumps(header)}. "
            "Delete it to start over, or rerun with the same settings."
        )
    done = {}
    for number, line in enumerate(lines[1:], start=2):
        record = json.loads(line)
        index = record["index"]
        if index >= len(prompts) or prompts[index].instruction != record["instruction"]:
            raise ValueError(f"{path}: line {number} does not match prompt {index} of the prompt file")
        done[index] = record
    return done


# ---------------------------------------------------------------------------------------------- driver


def run_header(template: str, settings: DecodingSettings, generator: str, backend: str = "hf") -> dict:
    """What must not change between a run and its resumption (batch size may).

    The backend is recorded only when it is not the default ``hf``, so sidecars of the transformers path stay
    as they were, and a run is never finished by another backend (their numerics differ).
    """
    decoding = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    backend_field = {} if backend == "hf" else {"backend": backend}
    return {"template": template, "generator": generator, **decoding, **backend_field}


def generate_outputs(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    template: str,
    settings: DecodingSettings,
    partial: Path,
    generator: str,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], GenerationStats]:
    """Outputs for all prompts in file order, resuming from and appending to the sidecar ``partial``.

    ``after_batch(number_of_batches_done)`` is called after each batch is safely on disk.
    """
    return run_resumable(
        tokenizer,
        prompts,
        template,
        settings,
        partial,
        run_header(template, settings, generator),
        plan=lambda lengths, pending: plan_batches(lengths, pending, settings.batch_size),
        generate=lambda rows: generate_batch(model, tokenizer, rows, settings),
        progress=progress,
        after_batch=after_batch,
    )


def run_resumable(
    tokenizer,
    prompts: Sequence[Prompt],
    template: str,
    settings: DecodingSettings,
    partial: Path,
    header: dict,
    plan: Callable[[list[int], list[int]], list[list[int]]],
    generate: Callable[[list[list[int]]], list[list[int]]],
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], GenerationStats]:
    """The resumable driver shared by the backends.

    ``plan(prompt_lengths, pending_indices)`` groups the pending prompts into batches (lists of indices);
    ``generate(prompt_id_rows)`` returns each row's new ids (EOS included when reached, at most its budget).
    Each batch's records are appended to the sidecar before the next batch starts.
    """
    done = read_sidecar(partial, header, prompts)
    if not partial.is_file() or partial.stat().st_size == 0:
        partial.parent.mkdir(parents=True, exist_ok=True)
        append_json_lines(partial, [{"header": header}])
    token_ids = prompt_token_ids(tokenizer, prompts, template)
    pending = [i for i in range(len(prompts)) if i not in done]
    stats = GenerationStats(resumed=len(done))
    # a redrawn bar on a terminal, a line every 5% in a log file
    bar = progress_bar(len(prompts), initial=len(done), unit="prompt", desc="generate", enabled=progress)
    for number, batch in enumerate(plan([len(r) for r in token_ids], pending), 1):
        start = time.perf_counter()
        new_ids = generate([token_ids[i] for i in batch])
        stats.seconds += time.perf_counter() - start
        records = [
            {
                "index": i,
                "instruction": prompts[i].instruction,
                "output": decode_output(tokenizer, ids),
                "new_tokens": len(ids),
            }
            for i, ids in zip(batch, new_ids, strict=True)
        ]
        append_json_lines(partial, records)
        done.update((record["index"], record) for record in records)
        stats.prompts += len(batch)
        stats.no_room += sum(settings.budget(len(token_ids[i])) == 0 for i in batch)
        stats.new_tokens += sum(len(ids) for ids in new_ids)
        bar.update(len(batch))
        if after_batch is not None:
            after_batch(number)
    bar.close()
    return [done[i]["output"] for i in range(len(prompts))], stats


def model_outputs_records(prompts: Sequence[Prompt], outputs: Sequence[str], generator: str) -> list[dict]:
    """AlpacaEval ``model_outputs.json`` rows, in prompt-file order."""
    return [
        {"instruction": p.instruction, "output": o, "generator": generator, "dataset": p.dataset}
        for p, o in zip(prompts, outputs, strict=True)
    ]
