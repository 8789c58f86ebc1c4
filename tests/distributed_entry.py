"""What tests/test_distributed.py launches on every rank: the real `symnoise train`, optionally with a fault.

    python tests/distributed_entry.py [--kill-at-step N] [--nan-at-step N --nan-rank R]
        [--stop-at-step N --stop-rank R] [--count-syncs DIR] train CONFIG [--resume]

``--kill-at-step N``: every rank SIGKILLs itself once step N is logged (and saved, if due): a hard crash.
``--nan-at-step N --nan-rank R``: rank R writes a NaN into its (local shard of the) gradient of step N once the
step's last backward has run (the gradients are reduced across ranks by then), before Trainer takes the
gradient norm that the non-finite guard checks, so only the guard's cross-rank decision makes the other rank skip
or stop too.
``--stop-at-step N --stop-rank R``: rank R alone is asked to stop (as by a preemption notice) during step N's
first micro-batch, so only the ranks' agreement makes the other rank stop after step N too.
``--count-syncs DIR``: each rank counts the tensor reads that would make the host wait for a GPU in its steps
(tests/sync_counter.py) and writes them to ``DIR/rank{R}.json``.
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


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def install_nan(step: int, nan_rank: int) -> None:
    import torch

    from symnoise.train.trainer import RecipeTrainer

    original = RecipeTrainer.training_step

    def training_step(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        last_micro_batch = self.accelerator.sync_gradients
        if last_micro_batch and self.state.global_step + 1 == step and rank() == nan_rank:
            for param in self.model.parameters():
                grad = param.grad
                local = grad.to_local() if hasattr(grad, "to_local") else grad
                if local is not None and local.numel():
                    with torch.no_grad():
                        local.view(-1)[0] = float("nan")
                    break
        return loss

    RecipeTrainer.training_step = training_step


def install_stop(step: int, stop_rank: int) -> None:
    from symnoise.train.trainer import RecipeTrainer, request_stop

    original = RecipeTrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == step and rank() == stop_rank:
            request_stop()
        return original(self, *args, **kwargs)

    RecipeTrainer.training_step = training_step


def write_sync_counts(counter, folder: str) -> None:
    import json
    from pathlib import Path

    counts = {
        window: {step: sum(reads.values()) for step, reads in counter.per_step(window).items()}
        for window in ("step", "log")
    }
    in_steps = sorted({f"{read} {where}" for _, window, read, where in counter.calls if window == "step"})
    Path(folder, f"rank{rank()}.json").write_text(json.dumps({**counts, "step_reads": in_steps}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("--stop-at-step", type=int)
    parser.add_argument("--stop-rank", type=int, default=1)
    parser.add_argument("--count-syncs")
    options, rest = parser.parse_known_args(argv)
    if options.kill_at_step:
        install_kill(options.kill_at_step)
    if options.nan_at_step:
        install_nan(options.nan_at_step, options.nan_rank)
    if options.stop_at_step:
        install_stop(options.stop_at_step, options.stop_rank)
    counter = None
    if options.count_syncs:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from sync_counter import SyncCounter

        counter = SyncCounter().install()
    import torch.distributed as dist
    from transformers import Trainer

    from symnoise.cli.main import main as symnoise_main

    status = symnoise_main(rest)
    if counter is not None:
        counter.uninstall()
        write_sync_counts(counter, options.count_syncs)
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
