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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or the name of a shipped config (symnoise configs list); "
                        "sections model, data, noise, lora, training")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="override config fields, e.g. noise.alpha=10 training.max_steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--check", action="store_true", help="validate the config and data, then stop")


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
            print(f"{args.config}: valid")
            return 0
        from ..train import train

        result = train(config, resume=args.resume)
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
