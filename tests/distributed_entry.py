"""What tests/test_distributed.py launches on every rank: the real `symnoise train`, optionally with a fault.

    python tests/distributed_entry.py [--kill-at-step N] [--nan-at-step N --nan-rank R] train CONFIG [--resume]

``--kill-at-step N``: every rank SIGKILLs itself once step N is logged (and saved, if due): a hard crash.
``--nan-at-step N --nan-rank R``: rank R writes a NaN into its (local shard of the) gradient of step N just before
the non-finite guard runs, so only the guard's cross-rank decision makes the other rank skip or stop too.
Whatever the command returns, a process group still alive when it returns fails the run (exit 70), and so does a
Trainer not yet freed (its DDP/FSDP wrapper keeps the group's gloo threads alive): left for the interpreter's
exit, gloo aborts a fraction of exits at random (SIGABRT), which is how CI twice saw a finished run fail.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys


def install_kill(step: int) -> None:
    from transformers import Trainer

    original = Trainer._maybe_log_save_evaluate

    def log_save_evaluate(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Trainer._maybe_log_save_evaluate = log_save_evaluate


def install_nan(step: int, rank: int) -> None:
    import torch

    from symnoise.train.reliability import NonFiniteGuard

    original = NonFiniteGuard.on_pre_optimizer_step

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == step and int(os.environ.get("RANK", "0")) == rank:
            for param in self.trainer.model.parameters():
                grad = param.grad
                local = grad.to_local() if hasattr(grad, "to_local") else grad
                if local is not None and local.numel():
                    with torch.no_grad():
                        local.view(-1)[0] = float("nan")
                    break
        return original(self, args, state, control, **kwargs)

    NonFiniteGuard.on_pre_optimizer_step = on_pre_optimizer_step


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--nan-rank", type=int, default=1)
    options, rest = parser.parse_known_args(argv)
    if options.kill_at_step:
        install_kill(options.kill_at_step)
    if options.nan_at_step:
        install_nan(options.nan_at_step, options.nan_rank)
    import torch.distributed as dist
    from transformers import Trainer

    from symnoise.cli.main import main as symnoise_main

    status = symnoise_main(rest)
    if dist.is_initialized():  # gloo aborts some exits at random while a group is alive: make it certain here
        print("symnoise train returned with its process group still alive", file=sys.stderr)
        return 70
    if any(
        isinstance(o, Trainer) for o in gc.get_objects()
    ):  # not collected: its model wrapper holds the group
        print(
            "symnoise train returned with its Trainer (and the model wrapper holding the group) alive",
            file=sys.stderr,
        )
        return 70
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
