"""``symnoise export RUN --merge-lora OUT``: a LoRA run as one safetensors model for transformers or vLLM.

Examples::

    symnoise export runs/qwen2.5-0.5b/alpaca-symnoise-lora --merge-lora runs/qwen-merged
    symnoise generate runs/qwen-merged --backend vllm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_flags, add_trust_remote_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..dtypes import DTYPES

    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("run", type=Path, help="run directory written by `symnoise train` with lora.enabled")
    parser.add_argument(
        "--merge-lora",
        type=Path,
        metavar="OUT",
        required=True,
        help="directory for the merged model (base + adapter), its tokenizer and model card",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights dtype of the merged model (auto: the base model's own)",
    )
    add_flags(parser, {"--force": "replace OUT if it already holds files"})
    add_trust_remote_code(parser)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportError, base_model_of, check_export, merge_lora

    try:
        check_export(args.run, args.merge_lora, args.force)
        print(f"merging the LoRA adapter of {args.run} into {base_model_of(args.run)}")
        out = merge_lora(args.run, args.merge_lora, args.dtype, args.force, args.trust_remote_code)
    except ExportError as error:
        print(f"symnoise export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained or vllm.LLM")
    return 0
