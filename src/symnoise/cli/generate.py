"""``symnoise generate``: AlpacaEval ``model_outputs.json`` from a run directory or a hub model.

Everything that can be checked without the model (prompt file, template, settings) is checked before
the model is loaded, so a typo costs seconds, not a model load. ``--backend vllm`` runs the same prompts
and decoding with vLLM (optional, CUDA only); without vLLM installed it is refused at the same stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from symnoise import files, generation, offline, vllm_backend
from symnoise.dtypes import DTYPES
from symnoise.evaluation import sources
from symnoise.layout import OUTPUTS, RUN_INFO, RunLayout

from .options import add_flags, add_trust_remote_code


def default_prompts(data_dir: str | Path | None = None) -> Path:
    """The 805 AlpacaEval 1 prompts: from the local data folder (``--data-dir``, else $SYMNOISE_DATA_DIR) when one
    is named, else the ``tatsu-lab/alpaca_eval`` hub dataset (see `symnoise.evaluation.sources`)."""
    return sources.alpaca_eval_file("alpaca_eval", sources.data_dir(data_dir))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="run directory written by `symnoise train`, or any causal LM path / hub name"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="JSON list or JSONL of {instruction, dataset, input?} "
        "(default: the 805 AlpacaEval 1 prompts, from --data-dir or the hub)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"local data folder for the default prompts (default: "
        f"${sources.DATA_DIR_ENV}, else the tatsu-lab/alpaca_eval hub dataset)",
    )
    parser.add_argument("--output", type=Path, help=f"{OUTPUTS} to write (default: MODEL/{OUTPUTS})")
    parser.add_argument(
        "--template",
        choices=generation.TEMPLATES,
        help=f"prompt template; default: the one in MODEL/{RUN_INFO} (required without it)",
    )
    parser.add_argument("--name", help="generator name in the output (default: the model directory name)")
    parser.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default="hf",
        help="hf: batched transformers generate (default); vllm: vLLM on a CUDA GPU, same prompt "
        'ids and decoding (pip install "symnoise[vllm]")',
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward (hf backend)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=vllm_backend.DEFAULT_CHUNK_SIZE,
        help="prompts handed to vLLM at once; each chunk is saved before the next (vllm backend)",
    )
    parser.add_argument("--max-length", type=int, default=1024, help="prompt + new tokens, per prompt")
    parser.add_argument("--max-new-tokens", type=int, help="further limit on new tokens")
    parser.add_argument("--repetition-penalty", type=float, default=1.2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (hf backend)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    add_trust_remote_code(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="vLLM engine seed (vllm backend; decoding is greedy)"
    )
    add_flags(
        parser, {"--no-progress": "no progress bar (where stderr is not a terminal: no progress lines)"}
    )


def _output_path(args: argparse.Namespace) -> Path:
    if args.output is not None:
        return args.output
    if Path(args.model).is_dir():
        return RunLayout(args.model).outputs
    raise ValueError("--output is required when MODEL is not a local directory")


def _prepare(args: argparse.Namespace):
    """Prompts, template, settings, output path and generator name, all checked; raises ValueError."""
    if args.backend == "vllm":
        vllm_backend.check_available()
        if args.device != "auto":
            raise ValueError(
                "--device applies to --backend hf; vLLM uses the visible CUDA GPUs "
                "(choose them with CUDA_VISIBLE_DEVICES)"
            )
        if args.chunk_size < 1:
            raise ValueError("--chunk-size must be >= 1")
    try:
        prompts_file = args.prompts or default_prompts(args.data_dir)
    except sources.SourceError as error:
        raise ValueError(
            f"no --prompts given and the AlpacaEval prompts are not available: {error}"
        ) from None
    prompts = generation.load_prompts(prompts_file)
    template = generation.resolve_template(args.model, args.template)
    settings = generation.DecodingSettings(
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        batch_size=args.batch_size,
    )
    output = _output_path(args)
    generator = args.name or Path(str(args.model).rstrip("/")).name
    header = generation.run_header(template, settings, generator, backend=args.backend)
    resumed = generation.read_sidecar(generation.sidecar_path(output), header, prompts)
    if not Path(args.model).expanduser().exists():  # last: the cheap checks of the inputs come first
        problem = offline.model_unavailable(
            args.model, subject="MODEL", instead="give a run directory or a local model folder as MODEL"
        )
        if problem is not None:
            raise ValueError(problem)
    return prompts, template, settings, output, generator, len(resumed)


def run(args: argparse.Namespace) -> int:
    try:
        prompts, template, settings, output, generator, n_resumed = _prepare(args)
    except ValueError as error:
        print(f"symnoise generate: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(prompts)} prompts, template {template!r}, {n_resumed} already done; loading {args.model}"
        + (" with vLLM" if args.backend == "vllm" else "")
    )
    if args.backend == "vllm":
        llm, tokenizer, eos_ids = vllm_backend.load(
            args.model, args.dtype, args.trust_remote_code, args.seed, max_model_len=settings.max_length
        )
        outputs, stats = vllm_backend.generate_outputs(
            llm,
            tokenizer,
            eos_ids,
            prompts,
            template,
            settings,
            generation.sidecar_path(output),
            generator,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
        )
    else:
        model, tokenizer = generation.load_model_and_tokenizer(
            args.model, args.device, args.dtype, args.trust_remote_code
        )
        outputs, stats = generation.generate_outputs(
            model,
            tokenizer,
            prompts,
            template,
            settings,
            generation.sidecar_path(output),
            generator,
            progress=not args.no_progress,
        )
    files.write_json_atomic(output, generation.model_outputs_records(prompts, outputs, generator))
    generation.sidecar_path(output).unlink(missing_ok=True)  # progress file: everything is in the output now
    print(
        f"wrote {len(outputs)} outputs to {output} ({stats.resumed} resumed); generated {stats.prompts} prompts, "
        f"{stats.new_tokens} tokens in {stats.seconds:.1f} s = {stats.tokens_per_second:.1f} tokens/s"
    )
    if stats.no_room:
        print(
            f"warning: {stats.no_room} prompts reach --max-length on their own; their outputs are empty",
            file=sys.stderr,
        )
    return 0
