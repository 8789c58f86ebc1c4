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

INTERMIXED_ARGS = True  # `symnoise train C.yaml --resume noise.alpha=10`: overrides may follow the flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or the name of a shipped config (symnoise configs list); "
                        "sections model, data, noise, lora, training")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="override config fields, e.g. noise.alpha=10 training.max_steps=100")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its last checkpoint; refused when the config "
                        "changes training (noise, data, model, optimiser, schedule, batch)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the files of an earlier run in output_dir first (only files symnoise wrote)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, the environment, the data and the model source, then stop")


def run(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..shipped_configs import resolve_config_path
    from ..train import ConfigError, load_config
    from ..train.reliability import TrainingError
    from ..train.sharing import UploadError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(resolve_config_path(args.config), args.overrides)
        if args.check:
            print(f"{args.config}: valid ({check(config)})")
            return 0
        from ..train import train

        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:  # stopped on purpose (non-finite loss, disk full): the message says what to do
        print(f"training stopped: {error}", file=sys.stderr)
        return 1
    except UploadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"finished {result.steps} steps on {result.train_examples} examples; final loss "
          f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}; wrote {result.run_dir}")
    return 0


def check(config) -> str:
    """Everything `symnoise train` checks before loading the model, without writing anything."""
    from ..train import preflight
    from ..train.recipe import load_data, load_tokenizer

    preflight.check_before_data(config)
    preflight.check_output_dir(config.training.output_dir)
    examples, report, eval_examples = load_data(config)
    preflight.check_before_model(config)
    preflight.check_chat_template(config, load_tokenizer(config), config.resolved_template(report.format))
    held_out = f", {len(eval_examples)} held-out" if eval_examples is not None else ""
    return f"{len(examples)} examples from {report.source}{held_out}; model {config.model.name}"
