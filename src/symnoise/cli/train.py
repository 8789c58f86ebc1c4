"""``symnoise train CONFIG.yaml [section.field=value ...] [--resume]``: fine-tune with noisy embeddings.

Examples::

    symnoise train configs/llama2-7b/alpaca-symnoise.yaml
    symnoise train qwen2.5-0.5b/alpaca-symnoise-lora data.path=my_data.jsonl    # a shipped config by name
    symnoise train configs/llama2-7b/alpaca-symnoise.yaml noise.alpha=10 training.output_dir=runs/a10
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m symnoise train CONFIG.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from .options import add_flags

INTERMIXED_ARGS = True  # `symnoise train C.yaml --resume noise.alpha=10`: overrides may follow the flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        help="YAML config file, or the name of a shipped config (symnoise configs list); "
        "sections model, data, noise, lora, training",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="override config fields, e.g. noise.alpha=10 training.max_steps=100",
    )
    add_flags(
        parser,
        {
            "--resume": "continue the run in output_dir from its last checkpoint; refused when the config "
            "changes training (noise, data, model, optimiser, schedule, batch)",
            "--overwrite": "delete the files of an earlier run in output_dir first (only files symnoise wrote)",
            "--check": "validate the config, the environment and the model source, read every data file and "
            "tokenise a sample with the model's tokenizer (no weights), then stop",
        },
    )


def run(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..shipped_configs import resolve_config_path
    from ..train import ConfigError, load_config
    from ..train.distributed import leave_process_group
    from ..train.reliability import TrainingError
    from ..train.sharing import UploadError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(resolve_config_path(args.config), args.overrides)
        if args.check:
            return check(args.config, config)
        from ..train import train

        try:
            result = train(config, resume=args.resume, overwrite=args.overwrite)
        finally:
            leave_process_group()
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (
        TrainingError
    ) as error:  # stopped on purpose (non-finite loss, disk full): the message says what to do
        print(f"training stopped: {error}", file=sys.stderr)
        return 1
    except UploadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"finished {result.steps} steps on {result.train_examples} examples; final loss "
        f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}; wrote {result.run_dir}"
    )
    return 0


def check(config_path: str, config) -> int:
    """--check: everything `symnoise train` checks before loading the model, without writing anything: the
    config, the environment and output_dir, the model source, every data file read to the end, and a sample
    rendered and tokenised with the model's tokenizer (no weights)."""
    from ..data.check import check_sources
    from ..data.mixture import specs_from_section
    from ..train import ConfigError, preflight
    from ..train.recipe import load_tokenizer

    preflight.check_before_data(config)
    preflight.check_output_dir(config.training.output_dir)
    print(f"{config_path}: config valid")
    specs, eval_spec = specs_from_section(config.data)
    try:
        preflight.check_before_model(config)
        tokenizer = load_tokenizer(config)
    except ConfigError as error:  # the model source is wrong: say so, and still check the data
        print(f"error: {error}", file=sys.stderr)
        tokenizer = None
    except Exception as error:  # offline, no such model, no access: say so, and still check the data
        print(
            f"error: cannot load the tokenizer of {config.model.name}: {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}",
            file=sys.stderr,
        )
        tokenizer = None
    if tokenizer is not None:
        preflight.check_chat_template(config, tokenizer, config.data.template)
        print(f"model {config.model.name}: source and tokenizer ok")
    for line in check_sources(specs, eval_spec, tokenizer, config.data.max_length):
        print(line)
    if tokenizer is None:
        return 2
    print(f"{config_path}: data valid")
    return 0
