"""The ``symnoise`` command: a thin dispatcher over one entry module per sub-command.

Each entry module in ``symnoise.cli`` defines ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``symnoise stats`` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from ..quiet import quiet_command_output

DESCRIPTION = """\
Instruction fine-tuning with noisy embeddings (NEFTune, Gaussian, Bernoulli, SymNoise) and the papers' evaluation.
"""

EPILOG = """\
start here:
  symnoise quickstart                                   train and compare methods on a built-in task set (CPU)
  symnoise configs list                                 the shipped configs (0.5B, 1B, 8B starters, paper grid)
  symnoise configs copy qwen2.5-0.5b/alpaca-symnoise-lora my.yaml
  symnoise train my.yaml data.path=my_data.jsonl        fine-tune on your own data (fields: see the README)
  symnoise export runs/my-run --merge-lora merged/      a LoRA run as one model for transformers or vLLM
  symnoise generate runs/my-run --prompts prompts.jsonl

Run `symnoise COMMAND --help` for a command's options.
"""

# Each command's entry module is symnoise.cli.<command>; the text is its line in `symnoise --help`.
COMMANDS: dict[str, str] = {
    "train": "fine-tune a causal LM on instruction data with noisy embeddings",
    "configs": "list the shipped configs, or copy one to edit",
    "export": "merge a LoRA run into its base model for serving",
    "quickstart": "train and compare noise methods on a built-in task set, no download",
    "generate": "generate AlpacaEval-format outputs from a checkpoint",
    "judge": "judge model outputs against reference outputs with an LLM",
    "winrate": "AlpacaEval win rates from annotation files",
    "stats": "length, 2-gram repetition and log-diversity of outputs",
    "leaderboard": "ARC, HellaSwag and MMLU through lm-evaluation-harness",
    "norms": "the sqrt(3) norm analysis of the SymNoise paper",
    "report": "collect runs into the papers' tables",
    "compare": "paired difference between two judged runs: win rate, length, repetition",
    "grid": "train and evaluate a matrix of runs, resumably, then report",
    "analyze": "gradient variance, antithetic ratio, curvature and Hessian trace of trained runs",
}


def entry_module(command: str) -> str:
    """The module that declares and runs ``command``."""
    return f"{__package__}.{command}"


def build_parser(available: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symnoise",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in available.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = {
        name: text
        for name, text in COMMANDS.items()
        if importlib.util.find_spec(entry_module(name)) is not None
    }
    if not argv or argv[0] not in available:
        build_parser(available).parse_args(argv)  # prints usage and exits for unknown or missing commands
        return 2
    name, rest = argv[0], argv[1:]
    quiet_command_output()  # other libraries' noise and, where stderr is no terminal, progress bars
    module = importlib.import_module(entry_module(name))
    parser = argparse.ArgumentParser(prog=f"symnoise {name}", description=available[name])
    module.add_arguments(parser)
    # Commands taking overrides after their positional arguments (`train C.yaml --resume noise.alpha=10`) let
    # options and positionals mix; plain parse_args would reject the overrides after --resume.
    parse = parser.parse_intermixed_args if getattr(module, "INTERMIXED_ARGS", False) else parser.parse_args
    try:
        return int(module.run(parse(rest)) or 0)
    except BrokenPipeError:  # the reader went away (`symnoise configs list | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
