"""Packed batches under every attention implementation and with a KV cache: no sequence attends to another.

* FlashAttention infers packed sequences from position ids only for a one-row batch, so the `rows` layout
  carries the varlen kwargs (``cu_seq_lens_q/k``, ``max_length_q/k``) of its flattened rows, and `padding_free`
  carries them too (no per-layer re-derivation, which is a host sync). FlashAttention itself needs CUDA; here
  transformers' own FlashAttention path (`flash_attention_forward` -> `_flash_attention_forward`, which picks the
  dense, position-id or varlen kernel) runs with CPU reference kernels that compute exact causal attention over
  whatever sequences they are given. A batch that reaches the dense kernel with several packed sequences per row
  attends across them, as the real kernel would.
* SymNoise doubles a packed batch along the sequence only when FlashAttention must infer the sequences of one
  row from position ids; otherwise (SDPA, eager, or FlashAttention with the varlen kwargs) along the batch.
* With the KV cache on (``TrainingArguments(use_cache=True)``, a config with ``use_cache: true``), transformers
  does not look for packed sequences at all; our collator and the attachment turn the cache off.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

import symnoise
from symnoise import NoiseConfig, attach
from symnoise.data import tokenize_examples
from symnoise.data.packing import PackedRowsCollator
from symnoise.pair import pair_axis
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer
from symnoise.train import recipe
from symnoise.train.config import validate_config
from symnoise.train.recipe import make_collator

FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
FLASH_REFERENCE = (
    "flash_cpu_reference"  # "flash" in the name: transformers and symnoise treat it as FlashAttention
)
TINY = NoiseConfig("symnoise", 1e-30, seed=0)  # doubles the batch, adds no measurable noise


@pytest.fixture(scope="module")
def data():
    train, _ = make_task_examples(64, 11, seed=3)
    tokenizer = train_tokenizer(tokenizer_corpus(train), vocab_size=400)
    dataset = tokenize_examples(train, tokenizer, "alpaca", max_length=128)
    return tokenizer, [dataset[i] for i in range(12)]


def collate(tokenizer, features, packing, max_length=256):
    config = validate_config(
        {
            "model": {"name": "m"},
            "data": {"path": "d.json", "packing": packing, "max_length": max_length},
            "training": {"output_dir": "out", "report_to": [], "device": "cpu"},
        }
    )
    return make_collator(config, tokenizer)([dict(f) for f in features])


def without(batch, keys):
    return {k: v for k, v in batch.items() if k not in keys}


def tiny_llama(tokenizer, attn="sdpa"):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(
        tiny_llama_config(
            len(tokenizer), hidden_size=32, layers=2, heads=4, kv_heads=2, initializer_range=0.1
        ),
        attn_implementation="sdpa",
    )  # weights large enough that attention across sequences shows in the loss
    model.config.use_cache = False
    if attn != "sdpa":
        model.config._attn_implementation = (
            attn  # the reference cannot pass set_attn_implementation's import check
        )
    return model.float().train()


class ReferenceKernels:
    """Exact causal attention in the call signatures of flash-attn's ``flash_attn_func`` (batch, length, heads,
    dim) and ``flash_attn_varlen_func`` (flattened tokens, with ``cu_seqlens``); records which one ran."""

    def __init__(self):
        self.calls: list[str] = []

    @staticmethod
    def attend(q, k, v, causal, scale):
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=causal, scale=scale
        )
        return out.transpose(0, 1)

    def dense(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
        self.calls.append("dense")
        return torch.stack([self.attend(q[b], k[b], v[b], causal, softmax_scale) for b in range(q.shape[0])])

    def varlen(
        self,
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q=None,
        max_seqlen_k=None,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        **kwargs,
    ):
        self.calls.append("varlen")
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and int(cu_seqlens_q[-1]) == q.shape[0]
        assert max_seqlen_q == int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
        bounds = cu_seqlens_q.tolist()
        return torch.cat(
            [
                self.attend(q[s:e], k[s:e], v[s:e], causal, softmax_scale)
                for s, e in zip(bounds, bounds[1:], strict=False)
            ]
        )


@pytest.fixture
def flash_reference(monkeypatch):
    """Route transformers' FlashAttention path to `ReferenceKernels` under the name FLASH_REFERENCE."""
    from transformers import AttentionInterface
    from transformers import modeling_flash_attention_utils as fa
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    kernels = ReferenceKernels()
    process = fa._lazy_define_process_function(kernels.varlen)
    monkeypatch.setattr(
        fa,
        "lazy_import_flash_attention",
        lambda *args, **kwargs: (
            (kernels.dense, kernels.varlen, None, fa._pad_input, fa._unpad_input),
            (process, dict),
        ),
    )
    AttentionInterface.register(FLASH_REFERENCE, flash_attention_forward)
    AttentionMaskInterface.register(FLASH_REFERENCE, flash_attention_mask)  # the masks FlashAttention 2 gets
    return kernels


def loss(model, batch, noise: NoiseConfig | None = None):
    with torch.no_grad():
        if noise is None:
            return model(**batch).loss.item()
        with attach(model, noise):
            return model(**batch).loss.item()


class ShapeRecorder:
    """The (batch, length) the input embeddings see: how SymNoise laid out the doubled batch."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        model.get_input_embeddings().register_forward_hook(
            lambda module, args, out: self.shapes.append(tuple(out.shape[:2]))
        )


# ---------------------------------------------------------------------------------------- varlen kwargs (items 6, 8)
def test_rows_collator_gives_exact_varlen_kwargs_for_a_known_batch():
    features = [{"input_ids": [7] * n, "labels": [7] * n} for n in (4, 4, 3)]
    batch = PackedRowsCollator(row_length=8, pad_token_id=0)(features)
    # Balanced rows: three rows of width 4 (fewer positions than two rows of 8); the last has a 1-token filler.
    assert batch["input_ids"].shape == (3, 4)
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 8, 11, 12] == batch["cu_seq_lens_k"].tolist()
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["max_length_q"] == batch["max_length_k"] == 4
    assert isinstance(batch["max_length_q"], int) and batch["use_cache"] is False
    plain = PackedRowsCollator(row_length=8, pad_token_id=0, return_flash_attn_kwargs=False)(features)
    assert not set(FLASH_KWARGS) & set(plain)


@pytest.mark.floor
@pytest.mark.parametrize("packing", ["rows", "padding_free"])
def test_collated_varlen_kwargs_equal_what_transformers_derives_from_position_ids(data, packing):
    """What FlashAttention would otherwise re-derive in every layer from the flattened position ids."""
    tokenizer, features = data
    batch = collate(tokenizer, features, packing)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"].reshape(1, -1))
    assert torch.equal(batch["cu_seq_lens_q"], cu_q) and torch.equal(batch["cu_seq_lens_k"], cu_k)
    assert batch["max_length_q"] == int(max_q) and batch["max_length_k"] == int(max_k)
    if packing == "rows":
        assert batch["input_ids"].shape[0] > 1  # several rows: the case transformers cannot infer itself
    else:
        assert batch["cu_seq_lens_q"].tolist() == [
            0,
            *torch.tensor([len(f["input_ids"]) for f in features]).cumsum(0).tolist(),
        ]


def test_rows_under_flash_attention_keep_sequences_apart(data, flash_reference):
    """The `rows` layout (several rows) gives the padded loss under FlashAttention through the varlen kernel.
    Without the varlen kwargs (the collator before this fix) the dense kernel runs and sequences attend across."""
    tokenizer, features = data
    padded = loss(tiny_llama(tokenizer), collate(tokenizer, features, "none"))
    model = tiny_llama(tokenizer, FLASH_REFERENCE)
    rows = collate(tokenizer, features, "rows")
    assert rows["input_ids"].shape[0] > 1
    assert loss(model, rows) == pytest.approx(padded, rel=1e-5)
    assert flash_reference.calls and set(flash_reference.calls) == {"varlen"}
    flash_reference.calls.clear()
    crossing = loss(model, without(rows, FLASH_KWARGS))
    assert (
        set(flash_reference.calls) == {"dense"} and abs(crossing - padded) > 1e-3 * padded
    )  # 100x the tolerance above


@pytest.mark.parametrize(
    "packing,varlen_kwargs,along", [("rows", True, 0), ("padding_free", True, 0), ("padding_free", False, 1)]
)
def test_symnoise_pair_under_flash_attention_equals_padded(
    data, flash_reference, packing, varlen_kwargs, along
):
    """The doubled batch keeps the copy apart from the original: along the batch with the varlen kwargs, in the
    same row (where transformers infers one row's sequences from position ids) without them."""
    tokenizer, features = data
    reference = tiny_llama(tokenizer)
    padded = loss(reference, collate(tokenizer, features, "none"), TINY)
    model = tiny_llama(tokenizer, FLASH_REFERENCE)
    batch = collate(tokenizer, features, packing)
    if not varlen_kwargs:
        batch = without(batch, FLASH_KWARGS)
    shapes = ShapeRecorder(model)
    assert loss(model, batch, TINY) == pytest.approx(padded, rel=1e-5)
    rows, width = batch["input_ids"].shape
    assert shapes.shapes == [(2 * rows, width) if along == 0 else (rows, 2 * width)]
    assert set(flash_reference.calls) == {"varlen"}


@pytest.mark.floor
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_symnoise_doubles_a_cu_seq_lens_batch_along_the_batch_under_dense_attention(data, attn):
    """A padding-free row with ``cu_seq_lens`` under SDPA/eager: the copy is a second row (two T^2 masks), not
    the same row (one (2T)^2 mask), and the loss is the padded one."""
    tokenizer, features = data
    model = tiny_llama(tokenizer, attn)
    padded = loss(model, collate(tokenizer, features, "none"), TINY)
    batch = transformers.DataCollatorWithFlattening(
        return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=True
    )([dict(f) for f in features])
    assert batch["input_ids"].shape[0] == 1
    shapes = ShapeRecorder(model)
    assert loss(model, batch, TINY) == pytest.approx(padded, rel=1e-5)
    assert shapes.shapes == [(2, batch["input_ids"].shape[1])]


def test_pair_axis_is_chosen_by_the_attention_implementation():
    for implementation in ("sdpa", "eager", "flex_attention"):
        assert pair_axis(1, True, implementation, varlen_kwargs=True) == 0
        assert pair_axis(1, True, implementation, varlen_kwargs=False) == 0
    for implementation in (
        "flash_attention_2",
        "flash_attention_3",
        "flash_attention_4",
        "kernels-community/flash-attn2",
    ):
        assert (
            pair_axis(1, True, implementation, varlen_kwargs=False) == 1
        )  # one row, boundaries from positions
        assert pair_axis(1, True, implementation, varlen_kwargs=True) == 0  # varlen over the flattened batch
        assert pair_axis(3, True, implementation, varlen_kwargs=True) == 0
        assert pair_axis(1, False, implementation, varlen_kwargs=False) == 0  # padded: one sequence per row


# ---------------------------------------------------------------------------------------------- flex attention
FLEX_TOLERANCE = 1e-5  # float32 logits: the same sums in another order (measured differences ~1e-6)


@pytest.fixture
def flex_run(data, tmp_path):
    """A padding-free config asking for flex_attention, and the tiny Llama saved and loaded by the recipe with it.

    torch's FlexAttention has no backward pass on the CPU (2.13), so only forwards run here. transformers compiles
    it (torch.compile: 10-30 s per new shape on this CPU); each shape is compiled for itself, since the kernel
    that torch 2.13 generates for dynamic shapes on the CPU does not compile (a C++ error in inductor's template).
    """
    import torch._dynamo

    tokenizer, _ = data
    tiny_llama(tokenizer).save_pretrained(tmp_path / "model")
    config = validate_config(
        {
            "model": {"name": str(tmp_path / "model"), "attn_implementation": "flex_attention"},
            "data": {"path": "d.json", "packing": "padding_free", "max_length": 256},
            "training": {"output_dir": "out", "report_to": [], "device": "cpu"},
        }
    )
    model = recipe.load_model(config, "fp32").train()
    assert model.config._attn_implementation == "flex_attention"
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        yield config, model


@pytest.mark.slow
def test_padding_free_under_flex_attention_keeps_sequences_apart(data, flex_run):
    """One packed row of three sequences under FlexAttention (the block mask transformers builds from the
    restarting position ids) gives the logits of SDPA on the same row and of each sequence run alone, and the
    padded batch's loss; the same row as one causal sequence differs by far more than the tolerance."""
    tokenizer, features = data
    config, flex = flex_run
    features = features[:3]
    batch = make_collator(config, tokenizer)([dict(f) for f in features])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    sdpa = tiny_llama(tokenizer)
    with torch.no_grad():
        flex_out, sdpa_out = flex(**batch), sdpa(**batch)
        alone = torch.cat([sdpa(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features])
        crossing = sdpa(input_ids=batch["input_ids"]).logits[0]  # no position ids: one sequence
    assert torch.allclose(flex_out.logits, sdpa_out.logits, rtol=0, atol=FLEX_TOLERANCE)
    assert torch.allclose(flex_out.logits[0], alone, rtol=0, atol=FLEX_TOLERANCE)
    assert (crossing - alone).abs().max() > 1000 * FLEX_TOLERANCE
    padded = loss(tiny_llama(tokenizer), collate(tokenizer, features, "none"))
    assert flex_out.loss.item() == pytest.approx(padded, rel=1e-5)
    assert flex_out.loss.item() == pytest.approx(sdpa_out.loss.item(), rel=1e-5)


@pytest.mark.slow
def test_symnoise_pair_under_flex_attention_doubles_along_the_batch(data, flex_run):
    """SymNoise's copy becomes a second packed row under FlexAttention (two block masks of T^2), and the loss is
    the padded one."""
    tokenizer, features = data
    config, flex = flex_run
    padded = loss(tiny_llama(tokenizer), collate(tokenizer, features, "none"), TINY)
    batch = make_collator(config, tokenizer)([dict(f) for f in features])
    shapes = ShapeRecorder(flex)
    assert loss(flex, batch, TINY) == pytest.approx(padded, rel=1e-5)
    assert shapes.shapes == [(2, batch["input_ids"].shape[1])]


def test_flex_attention_trains_only_where_torch_has_its_backward(
    base_model, alpaca_file, tmp_path, monkeypatch
):
    """torch 2.13 has no FlexAttention backward on the CPU: a CPU run is refused before the data is read, naming
    the field; on CUDA, or with a torch that has the CPU backward, the config passes."""
    from test_train import tiny_config

    from symnoise.train import preflight, train
    from symnoise.train.config import ConfigError

    config = tiny_config(
        base_model, alpaca_file, tmp_path / "run", model__attn_implementation="flex_attention"
    )
    with pytest.raises(ConfigError) as error:
        train(config)
    assert str(error.value) == (
        f"model.attn_implementation=flex_attention cannot train on the CPU: torch {torch.__version__} has no "
        "FlexAttention backward pass there; use sdpa or eager on CPU"
    )
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(preflight, "_flex_attention_trains_on_cpu", lambda: True)
    preflight.check_attention(config)
    monkeypatch.setattr(preflight, "_flex_attention_trains_on_cpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = config.model_copy(update={"training": config.training.model_copy(update={"device": "auto"})})
    preflight.check_attention(on_gpu)


# ---------------------------------------------------------------------------------------------- KV cache (item 7)
def trainer_loss(tokenizer, features, collator, noise: NoiseConfig, tmp_path) -> float:
    """The training loss of one step of a plain transformers Trainer with the cache left on."""
    model = tiny_llama(tokenizer)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cache=True,
        max_steps=1,
        per_device_train_batch_size=len(features),
        learning_rate=1e-9,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=[dict(f) for f in features], data_collator=collator
    )
    assert model.config.use_cache is True  # Trainer applied args.use_cache
    symnoise.hf.add_noise(trainer, noise)
    return trainer.train().training_loss


def rows_without_cache_flag(tokenizer):
    collator = PackedRowsCollator(row_length=256, pad_token_id=tokenizer.pad_token_id)
    return lambda features: without(collator(features), {"use_cache"})


@pytest.mark.floor
@pytest.mark.parametrize(
    "collator_name,method",
    [
        ("rows", "uniform"),
        ("rows", "none"),
        ("rows", "symnoise"),
        ("rows-without-cache-flag", "uniform"),
        ("transformers-flattening", "uniform"),
        ("transformers-flattening", "none"),
    ],
)
def test_packed_batches_run_without_a_cache_whatever_the_method(data, tmp_path, collator_name, method):
    """The Trainer's loss on packed rows equals the padded loss with the cache on: our collator turns the cache
    off itself, and the attachment does it for any mask-less packed batch (transformers' flattening collator, or
    ours without the flag), noise or not."""
    tokenizer, features = data
    features = features[:6]
    padded = loss(tiny_llama(tokenizer), collate(tokenizer, features, "none"))
    collators = {
        "rows": PackedRowsCollator(row_length=256, pad_token_id=tokenizer.pad_token_id),
        "rows-without-cache-flag": rows_without_cache_flag(tokenizer),
        "transformers-flattening": transformers.DataCollatorWithFlattening(
            return_position_ids=True, separator_id=-100
        ),
    }
    alpha = 0.0 if method == "none" else 1e-30
    value = trainer_loss(
        tokenizer, features, collators[collator_name], NoiseConfig(method, alpha, seed=0), tmp_path
    )
    assert value == pytest.approx(padded, rel=1e-5)
