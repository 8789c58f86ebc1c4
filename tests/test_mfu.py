"""MFU as `symnoise train` logs it (`symnoise.train.metrics`): the GPU peak table, the parameters that count, the
FLOPs per token for full fine-tuning and LoRA, and model MFU (the caller's real tokens) against hardware MFU
(every position the model ran, SymNoise's copy included). Pinned numbers, worked out by hand in the comments."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import symnoise
from symnoise import NoiseConfig, attach
from symnoise.data.packing import PackedRowsCollator
from symnoise.train import metrics as M
from symnoise.train.trainer import RecipeTrainer

# Dense bf16 TFLOP/s (no sparsity) from the vendors' datasheets, for names as torch.cuda.get_device_name gives them.
PEAKS = {
    "NVIDIA H100 80GB HBM3": 989.4,
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A10": 125.0,
    "NVIDIA A10G": 70.0,
    "NVIDIA L40S": 362.05,
    "NVIDIA L40": 181.05,
    "NVIDIA L4": 121.0,
    "NVIDIA RTX A6000": 154.8,
    "NVIDIA GeForce RTX 4090": 165.2,
    "NVIDIA B200": 2250.0,
}


@pytest.mark.parametrize("name,tflops", PEAKS.items())
def test_peak_table_maps_each_device_to_its_own_datasheet_figure(name, tflops):
    assert M.peak_flops(name) == pytest.approx(tflops * 1e12)


def test_unknown_devices_get_no_peak():
    for name in ("NVIDIA GeForce GTX 1080", "NVIDIA T4", "Tesla K80", "NVIDIA L4000", ""):
        assert M.peak_flops(name) is None, name


def tiny_llama(tie=False):
    # vocab 400, d 32, MLP 64, 2 layers, 4 heads of 8, 2 KV heads (K, V are 32 x 16). Per layer: q 1024, k 512,
    # v 512, o 1024, gate/up/down 3 x 2048, two norms 64 = 9,280; final norm 32; embedding and LM head 12,800 each.
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(config)


def test_flop_parameters_leave_out_the_embedding_lookup_unless_it_is_the_lm_head():
    model = tiny_llama()
    assert sum(p.numel() for p in model.parameters()) == 44_192
    assert M.flop_parameters(model) == (31_392, 31_392)  # 2 x 9,280 + 32 + 12,800 (LM head); all trained
    tied = tiny_llama(tie=True)
    assert M.flop_parameters(tied) == (
        31_392,
        31_392,
    )  # one table, used as the LM head's matrix: counted once
    model.model.embed_tokens.weight.requires_grad_(False)
    assert M.flop_parameters(model) == (31_392, 31_392)


def test_lora_counts_a_frozen_base_at_4n_and_the_adapters_at_6n():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # Adapters per layer: q: A 4 x 32 + B 32 x 4 = 256; v: A 4 x 32 + B 16 x 4 = 192; two layers: 896.
    n, trained = M.flop_parameters(model)
    assert (n, trained) == (31_392 + 896, 896)
    assert M.training_flops_per_token(n, trained) == 4 * 32_288 + 2 * 896 == 130_944
    assert M.training_flops_per_token(1000, 1000) == 6000  # full fine-tuning: 6 N
    assert M.training_flops_per_token(1000, 0) == 4000  # frozen: forward 2 N + activation gradients 2 N


class QuantState:
    def __init__(self, shape):
        self.shape = torch.Size(shape)


def test_a_4bit_parameter_counts_its_logical_elements_not_its_packed_bytes():
    layer = torch.nn.Linear(32, 64, bias=False)
    packed = torch.nn.Parameter(torch.zeros(64 * 32 // 2, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = QuantState((64, 32))  # what bitsandbytes' Params4bit carries
    layer.weight = packed
    assert packed.numel() == 1024 and M.logical_numel(packed) == 2048
    assert M.flop_parameters(layer) == (2048, 0)
    partitioned = torch.nn.Parameter(torch.empty(0))
    partitioned.ds_numel = 4096  # a DeepSpeed ZeRO-3 parameter outside its gather
    assert M.logical_numel(partitioned) == 4096


class FakeCounter:
    def __init__(self):
        self.real, self.total, self.copies = 0, 0, 0

    def pair_copy_positions(self):
        return self.copies


def test_model_and_hardware_mfu_for_a_symnoise_step(monkeypatch, tmp_path):
    """1e9 parameters, full fine-tuning: 6e9 FLOPs per token. In 2 s: 1,000 real tokens in 1,250 positions,
    doubled by SymNoise: model MFU 6e9 x 500 / 100e12 = 0.03, hardware MFU 6e9 x 1,250 / 100e12 = 0.075."""
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(M.time, "perf_counter", lambda: next(clock))
    counter = FakeCounter()
    run = M.RunMetrics(tmp_path, counter, torch.device("cpu"), n_params=10**9, world_size=2)
    run.flops = 100e12  # a GPU of 100 TFLOP/s
    counter.real, counter.total, counter.copies = 1000, 1250, 1250
    logs = {"loss": 1.0}
    run.extend(logs)
    assert logs["tokens_per_s"] == 1000.0  # 500 per rank x 2 ranks
    assert logs["processed_tokens_per_s"] == 2500.0
    assert logs["padding_fraction"] == 0.2
    assert logs["mfu"] == pytest.approx(0.03) and logs["hardware_mfu"] == pytest.approx(0.075)


def test_the_symnoise_handle_counts_the_positions_its_pair_adds():
    model = tiny_llama().train()
    batch = {"input_ids": torch.randint(3, 400, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    batch["labels"] = batch["input_ids"]
    for config, expected in [
        (NoiseConfig("symnoise", 5.0, seed=0), 10),
        (NoiseConfig("uniform", 5.0), 0),
        (NoiseConfig("symnoise", 0.0), 0),
    ]:
        with attach(model, config) as handle:
            model(**batch)
            assert handle.pair_copy_positions == expected, config
    with attach(model, NoiseConfig("symnoise", 5.0, execution="paired")) as handle:
        for _ in handle.paired_passes():
            model(**batch)
        assert handle.pair_copy_positions == 10  # the -eps pass
        model.eval()
        model(**batch)  # evaluation runs no pair
        assert handle.pair_copy_positions == 10


@pytest.mark.parametrize("method,factor", [("symnoise", 2), ("uniform", 1)])
def test_a_trainer_logs_processed_tokens_with_the_symnoise_copy(tmp_path, method, factor):
    """Through a Trainer with the recipe's metrics: processed / real tokens per second is exactly
    factor x positions / real tokens (the same seconds divide both)."""
    model = tiny_llama()
    features = [
        {"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))} for n in (9, 5, 7, 3, 12, 6)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=PackedRowsCollator(row_length=16, pad_token_id=0),
        run_dir=tmp_path,
    )
    symnoise.hf.add_noise(trainer, NoiseConfig(method, 5.0, seed=0))
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(lines) == 2
    for line in lines:
        ratio = line["processed_tokens_per_s"] / line["tokens_per_s"]
        assert ratio == pytest.approx(factor / (1 - line["padding_fraction"]), rel=1e-3)


def test_the_peak_comes_from_the_gpu_name_and_an_unknown_gpu_is_reported(monkeypatch, tmp_path, caplog):
    counter = FakeCounter()
    for name, peak in [("NVIDIA L40", 181.05e12), ("NVIDIA T4", None)]:
        monkeypatch.setattr(M.torch.cuda, "get_device_name", lambda device=None, name=name: name)
        with caplog.at_level("INFO", logger=M.__name__):
            run = M.RunMetrics(
                tmp_path, counter, torch.device("cuda"), n_params=1000, world_size=1, n_trained=10
            )
        assert run.flops == (pytest.approx(peak) if peak else None)
        assert run.flops_per_token == 4020
        assert ("not in the peak table" in caplog.text) == (peak is None)
        caplog.clear()
