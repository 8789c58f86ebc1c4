"""The grid on a GPU machine, with torch.cuda's answers faked where it matters: the from-scratch pretraining runs
on the GPU, and training in the grid's own process frees its Trainer, model and optimizer (and CUDA's cached
blocks) before the generation stage loads the trained model."""

import gc

import torch
from test_grid import tiny_grid, write_grid
from transformers import LlamaForCausalLM, PreTrainedModel, Trainer

from symnoise.grid import load_grid, read_stages
from symnoise.grid import runner as grid_runner
from symnoise.grid.cells import pretrained_model_dir


def training_objects(before: frozenset[int] = frozenset()) -> list[str]:
    """The Trainers, models and optimizers alive in this process (reachable or not), but for those whose ids are
    in ``before`` (what earlier tests in this worker may still hold, such as a module's fixtures)."""
    kinds = (Trainer, PreTrainedModel, torch.optim.Optimizer)
    return sorted(
        type(o).__name__ for o in gc.get_objects() if issubclass(type(o), kinds) and id(o) not in before
    )


def alive_ids() -> frozenset[int]:
    kinds = (Trainer, PreTrainedModel, torch.optim.Optimizer)
    return frozenset(id(o) for o in gc.get_objects() if issubclass(type(o), kinds))


def test_pretraining_moves_the_model_to_the_gpu(tmp_path, monkeypatch):
    """With CUDA available, the pretraining model is put on the GPU before its first step (the batches follow
    the model's device). Module.to is recorded and leaves the model where it is, since this machine has no GPU."""
    moved, lines = [], []
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if isinstance(self, LlamaForCausalLM):
            moved.append(args[0] if args else kwargs.get("device"))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    grid = load_grid(write_grid(tmp_path, tiny_grid(tmp_path, methods=("none",))))
    grid_runner.prepare(grid, lines.append)
    assert moved == [torch.device("cuda")]
    assert any(line.startswith("pretraining ") and line.endswith(", on cuda") for line in lines), lines
    stage = read_stages(pretrained_model_dir(grid.spec).parent)["pretrain"]
    assert stage["first_loss"] > 0 and stage["final_loss"] > 0


def test_in_process_training_frees_its_trainer_before_generation(tmp_path, monkeypatch):
    """The Trainer and the noise attachment reference each other: without an explicit collection the trained
    model and its AdamW state stay allocated when generation loads another copy onto the GPU. The automatic
    collector is off here, so only what the train stage frees itself is gone when it returns."""
    grid = load_grid(write_grid(tmp_path, tiny_grid(tmp_path, methods=("symnoise",))))
    grid_runner.prepare(grid, lambda line: None)
    cell = grid.cells[0]
    grid_runner.write_cell_config(cell)
    gc.collect()
    before = alive_ids()  # kept alive by earlier tests in this worker, if any: not the train stage's
    emptied = []  # what the train stage left alive each time CUDA's cache was emptied
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(training_objects(before)))
    gc.disable()
    try:
        info = grid_runner.stage_train(grid_runner.CellContext(grid, cell))
        left = training_objects(before)
    finally:
        gc.enable()
    assert info["steps"] == 2
    assert left == []
    assert emptied == [[]]  # once, after everything was collected
