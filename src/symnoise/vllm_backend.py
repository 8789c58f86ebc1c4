"""``symnoise generate --backend vllm``: the same prompts, decoding and files as the transformers path, run by vLLM.

vLLM gets exactly the prompt token ids the transformers path uses (the run's template, BOS as in training), one
``SamplingParams`` per prompt (greedy, the NEFTune repetition penalty, the prompt's own token budget from
:meth:`DecodingSettings.budget`, the same stop ids), and schedules them itself with continuous batching.
Responses are cut and decoded by the same code as the transformers path, so only the model numerics differ.
Prompts go to vLLM in chunks in file order; each finished chunk is appended to the same JSONL sidecar, so a
killed run resumes with the prompts that are still pending. The sidecar header records ``backend: vllm``, so
a run started with one backend is never finished with the other.

A LoRA run is served through a merged copy of base and adapter (``RUN/merged/``, made once), not through vLLM's
LoRA adapters, so both backends run the same weights. vLLM is optional (``pip install "symnoise[vllm]"``) and needs a CUDA GPU; it is imported only when used.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from symnoise import generation
from symnoise.dtypes import check_dtype, gpu_half_dtype
from symnoise.generation import DecodingSettings, GenerationStats, Prompt

BACKEND = "vllm"
DEFAULT_CHUNK_SIZE = 256
MERGED_DIR = "merged"  # inside a LoRA run directory: base + adapter, what vLLM loads
INSTALL_HINT = (
    '--backend vllm needs the vllm package and a CUDA GPU; install it with pip install "symnoise[vllm]" '
    "(or pip install vllm), or use --backend hf"
)


def available() -> bool:
    """Whether ``import vllm`` can succeed, without importing it (importing vLLM initialises a lot)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # already imported, without a module spec
        return sys.modules.get("vllm") is not None


def check_available() -> None:
    """Raise ValueError with installation advice when vLLM is not installed."""
    if not available():
        raise ValueError(INSTALL_HINT)


def vllm_dtype(dtype: str) -> str:
    """The dtype vLLM is given: as asked, and for ``auto`` what the transformers path picks on a GPU
    (bfloat16 where the GPU computes in it natively, else float16); without CUDA, ``auto`` is left to vLLM."""
    if check_dtype(dtype) != "auto":
        return dtype
    import torch

    if not torch.cuda.is_available():
        return "auto"
    return gpu_half_dtype()


def _generation_config(model: str | Path, trust_remote_code: bool):
    """The generation config ``from_pretrained`` would give the model: its file, else derived from its config."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model))
    except OSError:
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        return GenerationConfig.from_model_config(config)


def servable_model(model: str | Path, trust_remote_code: bool = False) -> str | Path:
    """What vLLM loads for ``model``: the model itself, or for a LoRA run directory its merged copy in
    ``RUN/merged/`` (made on first use with :func:`symnoise.export.merge_lora`, reused while it is newer than
    the adapter), so vLLM serves exactly the weights the transformers path generates with."""
    from symnoise import export

    if not export.is_lora_run(model):
        return model
    merged = Path(model) / MERGED_DIR
    adapter = Path(model) / "adapter_model.safetensors"
    weights = sorted(merged.glob("model*.safetensors"))
    if weights and (not adapter.is_file() or weights[0].stat().st_mtime >= adapter.stat().st_mtime):
        return merged
    print(f"{model} is a LoRA run: merging the adapter into {merged} for vLLM (reused next time)")
    return export.merge_lora(model, merged, overwrite=True, trust_remote_code=trust_remote_code)


def load(
    model: str | Path,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
    max_model_len: int | None = None,
):
    """A ``vllm.LLM`` for the model, its Hugging Face tokenizer, and the ids that end a response.

    A LoRA run directory is served through its merged copy (:func:`servable_model`). ``max_model_len`` is the
    longest prompt plus response the engine must hold (`DecodingSettings.max_length`): without it vLLM sizes and
    checks its KV cache for the model's whole context window (131,072 positions for Llama 3.x), and refuses to
    start on a GPU where that does not fit beside the weights although decoding never goes past ``max_length``.
    """
    import vllm
    from transformers import AutoTokenizer

    model = servable_model(model, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    eos_ids = generation.eos_token_ids(_generation_config(model, trust_remote_code), tokenizer)
    engine = dict(model=str(model), dtype=vllm_dtype(dtype), trust_remote_code=trust_remote_code, seed=seed)
    if max_model_len is not None:
        engine["max_model_len"] = max_model_len
    llm = vllm.LLM(**engine)
    return llm, tokenizer, eos_ids


def sampling_params(settings: DecodingSettings, prompt_length: int, eos_ids: Sequence[int]):
    """Greedy decoding with the transformers path's penalty, budget and stop ids, for one prompt."""
    import vllm

    return vllm.SamplingParams(
        temperature=0.0,
        max_tokens=settings.budget(prompt_length),
        repetition_penalty=float(settings.repetition_penalty),
        stop_token_ids=list(eos_ids),
        skip_special_tokens=True,
    )


def generate_chunk(
    llm, rows: Sequence[Sequence[int]], settings: DecodingSettings, eos_ids: Sequence[int]
) -> list[list[int]]:
    """New ids of each prompt id row (EOS included when reached, at most its budget), in the order of ``rows``.

    Prompts without room (budget 0) are not sent: vLLM refuses ``max_tokens=0``; their output is empty.
    """
    budgets = [settings.budget(len(row)) for row in rows]
    todo = [k for k, budget in enumerate(budgets) if budget > 0]
    new: list[list[int]] = [[] for _ in rows]
    if not todo:
        return new
    results = llm.generate(
        [{"prompt_token_ids": list(rows[k])} for k in todo],
        [sampling_params(settings, len(rows[k]), eos_ids) for k in todo],
        use_tqdm=False,
    )
    if len(results) != len(todo):
        raise RuntimeError(f"vLLM returned {len(results)} outputs for {len(todo)} prompts")
    for k, result in zip(todo, results, strict=True):
        echoed = getattr(result, "prompt_token_ids", None)
        if echoed is not None and list(echoed) != list(rows[k]):
            raise RuntimeError("vLLM returned an output for another prompt than the one at its position")
        new[k] = generation.cut_output(list(result.outputs[0].token_ids), eos_ids, budgets[k])
    return new


def plan_chunks(pending: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Pending prompt indices in file order, in chunks of ``chunk_size`` (vLLM batches within a chunk)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [list(pending[start : start + chunk_size]) for start in range(0, len(pending), chunk_size)]


def generate_outputs(
    llm,
    tokenizer,
    eos_ids: Sequence[int],
    prompts: Sequence[Prompt],
    template: str,
    settings: DecodingSettings,
    partial: Path,
    generator: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    after_chunk: Callable[[int], None] | None = None,
) -> tuple[list[str], GenerationStats]:
    """Outputs for all prompts in file order, resuming from and appending to the sidecar ``partial``.

    As :func:`symnoise.generation.generate_outputs`, with vLLM generating each chunk of pending prompts;
    ``after_chunk(number_of_chunks_done)`` is called after each chunk is safely on disk.
    """
    return generation.run_resumable(
        tokenizer,
        prompts,
        template,
        settings,
        partial,
        generation.run_header(template, settings, generator, backend=BACKEND),
        plan=lambda lengths, pending: plan_chunks(pending, chunk_size),
        generate=lambda rows: generate_chunk(llm, rows, settings, eos_ids),
        progress=progress,
        after_batch=after_chunk,
    )
