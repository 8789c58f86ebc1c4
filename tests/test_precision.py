"""Mixed precision of `symnoise train`: float32 master weights under bf16 autocast for full fine-tuning, pure bf16
only when asked (and what it costs), LoRA/QLoRA dtypes, and the model loaded after the distributed state."""

from __future__ import annotations

import pytest
import torch

from symnoise.train import recipe
from symnoise.train.config import ConfigError, validate_config

LR = 5e-5  # the papers' learning rate


def config(base_model, **training):
    lora = training.pop("lora", {})
    model = training.pop("model", {})
    return validate_config(
        {
            "model": {"name": str(base_model), **model},
            "data": {"path": "unused.json"},
            "lora": lora,
            "training": {"output_dir": "unused", **training},
        }
    )


def batch(vocab=400, rows=4, length=24):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def adamw_step(model, grads):
    """One AdamW step at lr 5e-5 with the given gradients; returns the weights before and after (float32)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype)
    before = [p.detach().float().clone() for p in params]
    torch.optim.AdamW(params, lr=LR, weight_decay=0.0).step()
    return before, [p.detach().float() for p in params]


def unchanged_fraction(before, after, grads):
    """Share of the elements with a non-zero gradient that the step left unchanged (AdamW moves every one of
    them by about lr; embedding rows of tokens absent from the batch have no gradient and are not counted)."""
    moved = [g != 0 for g in grads]
    unchanged = sum(((a == b) & m).sum().item() for a, b, m in zip(after, before, moved, strict=True))
    return unchanged / sum(m.sum().item() for m in moved)


def autocast_grads(model):
    """Gradients of one bf16-autocast forward and backward, as the Trainer computes them with bf16=True."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch()).loss
    loss.backward()
    grads = [p.grad.detach().float().clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return grads


def test_full_fine_tuning_in_bf16_keeps_fp32_master_weights_and_every_adamw_update(base_model):
    model = recipe.load_model(config(base_model, precision="bf16"), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    grads = autocast_grads(model)
    before, after = adamw_step(model, grads)
    # The reference: the same step on plain float32 weights with the same gradients.
    reference = recipe.load_model(config(base_model, precision="fp32"), "fp32")
    ref_before, ref_after = adamw_step(reference, grads)
    for b, a, rb, ra in zip(before, after, ref_before, ref_after, strict=True):
        assert torch.equal(b, rb)
        assert torch.equal(a - b, ra - rb)
    assert unchanged_fraction(before, after, grads) < 0.001


def test_pure_bf16_is_opt_in_and_loses_about_half_of_the_updates(base_model):
    """What recipe.load_model did before for precision=bf16, now only with training.pure_bf16: bf16 weights, on
    which one AdamW step at lr 5e-5 leaves about half of the elements unchanged."""
    model = recipe.load_model(config(base_model, precision="bf16", pure_bf16=True), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    grads = autocast_grads(model)
    before, after = adamw_step(model, grads)
    reference = recipe.load_model(config(base_model, precision="fp32"), "fp32")
    ref_before, ref_after = adamw_step(reference, [g.float() for g in grads])
    fraction = unchanged_fraction(before, after, grads)
    assert fraction > 0.3, fraction
    update, ref_update = (
        torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)]),
        torch.cat([(a - b).flatten() for a, b in zip(ref_after, ref_before, strict=True)]),
    )
    assert (update - ref_update).norm() / ref_update.norm() > 0.3  # far from the fp32 step


def test_bf16_weights_for_full_fine_tuning_must_be_asked_for_by_name(base_model):
    with pytest.raises(
        ConfigError, match=r"model\.dtype=bfloat16 with full fine-tuning.*training\.pure_bf16"
    ):
        config(base_model, model={"dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="pure_bf16 is for full fine-tuning"):
        config(base_model, pure_bf16=True, lora={"enabled": True})
    config(base_model, model={"dtype": "bfloat16"}, pure_bf16=True)  # valid
    config(base_model, model={"dtype": "bfloat16"}, lora={"enabled": True})  # a frozen bf16 base: valid


def test_lora_keeps_a_low_precision_base_and_fp32_adapters(base_model):
    model = recipe.load_model(config(base_model, precision="bf16", lora={"enabled": True}), "bf16")
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}


def test_qlora_puts_each_rank_on_its_own_gpu(base_model, monkeypatch):
    import transformers

    seen = {}

    def from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after reading the arguments")

    monkeypatch.setattr(recipe, "quantization_config", lambda precision: "nf4")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    qlora = config(base_model, precision="bf16", lora={"enabled": True, "quantize_4bit": True})
    with pytest.raises(RuntimeError, match="stop after"):
        recipe.load_model(qlora, "bf16", local_rank=3)
    assert seen["device_map"] == {"": 3} and seen["quantization_config"] == "nf4"
    assert seen["dtype"] == torch.bfloat16


def test_the_model_is_loaded_after_the_distributed_state_exists(
    base_model, alpaca_file, tmp_path, monkeypatch
):
    """from_pretrained honours FSDP's cpu_ram_efficient_loading and DeepSpeed's zero3_init only if accelerate's
    state exists when it runs (TrainingArguments makes it)."""
    from accelerate.state import PartialState

    real_load, states = recipe.load_model, []

    def load_model(*args, **kwargs):
        states.append(PartialState._shared_state != {} and PartialState().initialized)
        return real_load(*args, **kwargs)

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr(recipe, "load_model", load_model)
    data = {
        "model": {"name": str(base_model)},
        "data": {"path": str(alpaca_file), "max_length": 96},
        "noise": {"method": "uniform", "alpha": 5.0, "seed": 0},
        "training": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 1,
            "per_device_batch_size": 4,
            "effective_batch_size": 4,
            "report_to": [],
            "device": "cpu",
            "save_steps": 5,
        },
    }
    recipe.train(validate_config(data))
    assert states == [True]


def fake_gpu(monkeypatch, major: int) -> None:
    """torch.cuda as on a GPU of compute capability ``major``.x that can hold bfloat16 tensors (T4 and V100 can:
    torch emulates bf16 arithmetic there); torch's own ``is_bf16_supported`` then runs on these answers."""
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major)
    )
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)


@pytest.mark.parametrize(("major", "precision", "half"), [(7, "fp32", "float16"), (8, "bf16", "bfloat16")])
def test_auto_dtypes_count_only_native_bf16(base_model, monkeypatch, major, precision, half):
    """On a T4/V100 (compute capability 7) torch reports bf16 as supported, through emulation: `precision: auto`
    must not train in emulated bf16, and `--dtype auto` must not hand vLLM a dtype it refuses there."""
    from symnoise import generation, vllm_backend
    from symnoise.dtypes import gpu_half_dtype

    fake_gpu(monkeypatch, major)
    assert torch.cuda.is_bf16_supported()  # what torch says in both cases
    assert recipe.resolve_precision(config(base_model), use_cuda=True) == precision
    assert gpu_half_dtype() == half
    assert generation.resolve_dtype("auto", "cuda") == getattr(torch, half)
    assert vllm_backend.vllm_dtype("auto") == half


@pytest.mark.parametrize(
    ("precision", "compute"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]
)
def test_qlora_computes_in_the_training_precision(base_model, monkeypatch, precision, compute):
    """QLoRA's 4-bit layers compute in the dtype the run trains in, not in bf16 whatever the GPU (a T4 trains
    in fp16 or fp32). The BitsAndBytesConfig is built as `load_model` hands it to from_pretrained; CUDA and
    bitsandbytes are faked (the config object needs neither)."""
    import sys
    import types

    import transformers

    seen = {}

    def from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after reading the arguments")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    qlora = config(base_model, precision=precision, lora={"enabled": True, "quantize_4bit": True})
    with pytest.raises(RuntimeError, match="stop after"):
        recipe.load_model(qlora, precision)
    quantization = seen["quantization_config"]
    assert isinstance(quantization, transformers.BitsAndBytesConfig)
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype == compute
