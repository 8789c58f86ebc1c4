"""The noise stream's saved state is device-independent: (seed, draws). It restores into an attachment on any device
and continues the exact sequence; a model that moves between devices is not re-seeded (the FSDP/DeepSpeed
``--resume`` path: symnoise attaches while the model is still on the CPU)."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import make_tiny_model

from symnoise import NoiseConfig, attach
from symnoise import noise as N
from symnoise.noise_stream import derive_seed

CONFIG = NoiseConfig("uniform", 5.0, seed=3, length_mode="padded")


def inputs(device="cpu", seed=0):
    ids = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(seed)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class NoiseRecorder:
    """The noise added at each forward: the embedding output after symnoise's hook minus the clean embedding."""

    def __init__(self, model):
        self.noise = []
        embeddings = model.get_input_embeddings()

        def record(module, args, out):
            self.noise.append((out - torch.nn.functional.embedding(args[0], module.weight)).detach().cpu())

        hook = embeddings.register_forward_hook(record)
        embeddings.register_forward_pre_hook(
            lambda module, args: embeddings._forward_hooks.move_to_end(hook.id)
        )


def round_trip(state):
    """What a checkpoint does to the state: torch.save, then a weights-only load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True, map_location="cpu")


def test_saved_state_holds_no_device_specific_generator_bytes():
    model = make_tiny_model("llama").train()
    with attach(model, CONFIG) as handle:
        model(**inputs())
        model(**inputs(seed=1))
        state = handle.state_dict()
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    assert all(t.dtype == torch.int64 and t.numel() == 2 for t in tensors)
    assert state["draws"] == 2 and state["generator"].tolist() == [state["seed"], 2]


def test_restored_state_continues_the_exact_noise_sequence_after_a_device_move():
    """Uninterrupted: 3 draws. Resumed: a new model built on the meta device (as FSDP's cpu_ram_efficient_loading
    and ZeRO-3 init leave it), attached there, the state loaded, then the model materialised on its device: the
    third draw is the uninterrupted run's third draw."""
    model = make_tiny_model("llama").train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = NoiseRecorder(model)
    with attach(model, CONFIG) as handle:
        model(**inputs())
        model(**inputs(seed=1))
        saved = round_trip(handle.state_dict())
        model(**inputs(seed=2))
    expected = recorder.noise[-1]

    import transformers

    with torch.device("meta"):
        fresh = transformers.AutoModelForCausalLM.from_config(model.config, attn_implementation="eager")
    with attach(fresh, NoiseConfig("uniform", 5.0, seed=99, length_mode="padded")) as handle:
        handle.load_state_dict(saved)
        fresh.to_empty(device="cpu")
        fresh.load_state_dict(weights)
        fresh.train()
        recorder = NoiseRecorder(fresh)
        fresh(**inputs(seed=2))
    assert torch.equal(recorder.noise[-1], expected)


def test_each_draw_depends_only_on_the_stream_seed_and_its_index():
    """The contract that makes the state device-independent: draw k is sampled from a generator on the embeddings'
    device seeded with derive_seed(stream seed, k), whatever ran before (here: drawn on the CPU; on a GPU the same
    rule with a CUDA generator)."""
    model = make_tiny_model("llama").train()
    recorder = NoiseRecorder(model)
    with attach(model, CONFIG) as handle:
        for seed in range(3):
            model(**inputs(seed=seed))
        stream = handle.seed
    for k, noise in enumerate(recorder.noise):
        eps = N.sample_unit_noise(
            noise.shape, "uniform", generator=torch.Generator().manual_seed(derive_seed(stream, k))
        )
        scale = N.noise_scale(
            torch.full(noise.shape[:2], float(noise.shape[1])),
            noise.shape[-1],
            5.0,
            N.distribution_factor("uniform", CONFIG.match_uniform_norm),
        )
        assert torch.allclose(noise, eps * scale, rtol=0, atol=1e-6)


def test_a_state_from_an_older_version_is_refused_with_a_clear_message():
    model = make_tiny_model("llama")
    with attach(model, CONFIG) as handle:
        old = {"generator": torch.Generator().get_state(), "seed": 1, "rank": 0, "progress": 0.0}
        with pytest.raises(ValueError, match="device-specific generator state"):
            handle.load_state_dict(old)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (the CPU tests above cover the rule)"
)
def test_attached_on_cpu_trained_on_cuda_resumes_on_cuda():
    model = make_tiny_model("llama").train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = NoiseRecorder(model)
    with attach(model, CONFIG) as handle:
        model.to("cuda")
        model(**inputs("cuda"))
        saved = round_trip(handle.state_dict())
        model(**inputs("cuda", seed=1))
    expected = recorder.noise[-1]
    fresh = make_tiny_model("llama").train()
    fresh.load_state_dict(weights)
    with attach(fresh, CONFIG) as handle:
        handle.load_state_dict(saved)
        fresh.to("cuda")
        recorder = NoiseRecorder(fresh)
        fresh(**inputs("cuda", seed=1))
    assert torch.equal(recorder.noise[-1], expected)
