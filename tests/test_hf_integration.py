"""symnoise with transformers' Trainer, TRL's SFTTrainer, PEFT LoRA and gradient checkpointing, on tiny models."""

import math

import pytest
import torch
from conftest import make_tiny_model
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

import symnoise
from symnoise import NoiseConfig
from symnoise.hf import NOISE_STATE_PATTERN, add_noise

# Part of the floor subset: run against the lowest declared versions (tools/test_floors.sh).
pytestmark = pytest.mark.floor

ALPHA = 5.0
SQRT3 = math.sqrt(3.0)
TEXTS = [
    ("Add 12 and 30.", "42"),
    ("Sort 3 1 2.", "1 2 3"),
    ("Give three tips for staying healthy.", "Eat a balanced diet, exercise regularly and sleep well."),
    ("Reverse the word fox.", "xof"),
    ("What is the capital of the quick brown fox?", "The lazy dog."),
    ("Add 1 and 2.", "3"),
    ("Write the alphabet.", "abcdefghijklmnopqrstuvwxyz"),
    ("Count to five.", "1 2 3 4 5"),
]


def sft_rows(tokenizer, repeat=2):
    rows = []
    for prompt, response in TEXTS * repeat:
        p = tokenizer(prompt)["input_ids"]
        r = tokenizer(" " + response)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(
            {"input_ids": p + r, "attention_mask": [1] * (len(p) + len(r)), "labels": [-100] * len(p) + r}
        )
    return Dataset.from_list(rows)


def training_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    defaults.update(overrides)
    return TrainingArguments(**defaults)


def make_trainer(tmp_path, tokenizer, model=None, **overrides):
    model = model if model is not None else make_tiny_model("llama")
    return Trainer(
        model=model,
        args=training_args(tmp_path, **overrides),
        train_dataset=sft_rows(tokenizer),
        eval_dataset=sft_rows(tokenizer, repeat=1),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["uniform", "gaussian", "bernoulli", "symnoise"])
def test_trainer_runs_each_method_and_logs_the_noise(tmp_path, tiny_tokenizer, method):
    trainer = make_trainer(tmp_path, tiny_tokenizer)
    add_noise(trainer, NoiseConfig(method, ALPHA, seed=0))
    before = weights(trainer.model)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4 and all(math.isfinite(e["loss"]) for e in logs)
    # Mean per-example noise norm: alpha/sqrt(3) in expectation (exactly for Bernoulli noise).
    rel = 1e-5 if method in ("bernoulli", "symnoise") else 0.1
    assert all(e["noise_norm"] == pytest.approx(ALPHA / SQRT3, rel=rel) for e in logs)
    assert all(e["noise_alpha"] == ALPHA for e in logs)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert symnoise.get_handle(trainer.model) is None  # detached when train() returned


def test_trainer_paired_equals_concat(tmp_path, tiny_tokenizer):
    finals, losses = [], []
    for execution in ("concat", "paired"):
        trainer = make_trainer(
            tmp_path / execution, tiny_tokenizer, max_steps=2, optim="sgd", learning_rate=0.1
        )
        add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=3, execution=execution))
        trainer.train()
        finals.append(weights(trainer.model))
        losses.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for key in finals[0]:
        assert torch.allclose(finals[0][key], finals[1][key], rtol=1e-4, atol=1e-6), key


def test_alpha_zero_trainer_equals_plain_trainer(tmp_path, tiny_tokenizer):
    plain = make_trainer(tmp_path / "plain", tiny_tokenizer, max_steps=2)
    plain.train()
    noisy = make_trainer(tmp_path / "noisy", tiny_tokenizer, max_steps=2)
    add_noise(noisy, NoiseConfig("symnoise", 0.0))
    noisy.train()
    for key, value in weights(plain.model).items():
        assert torch.equal(value, noisy.model.state_dict()[key]), key


def test_eval_loss_is_identical_with_and_without_noise(tmp_path, tiny_tokenizer):
    trainer = make_trainer(tmp_path, tiny_tokenizer)
    clean = trainer.evaluate()["eval_loss"]
    with symnoise.attach(trainer.model, NoiseConfig("uniform", 50.0)):
        assert trainer.evaluate()["eval_loss"] == clean


def test_hook_removed_when_training_raises(tmp_path, tiny_tokenizer):
    trainer = make_trainer(tmp_path, tiny_tokenizer)
    add_noise(trainer, NoiseConfig("symnoise", ALPHA))

    class Boom(Exception):
        pass

    def explode(*args, **kwargs):
        raise Boom

    trainer.compute_loss = explode
    with pytest.raises(Boom):
        trainer.train()
    assert symnoise.get_handle(trainer.model) is None and not trainer.model._forward_hooks


def test_trainer_neftune_alpha_conflict_is_refused(tmp_path, tiny_tokenizer):
    trainer = make_trainer(tmp_path, tiny_tokenizer, neftune_noise_alpha=5)
    with pytest.raises(ValueError, match="neftune_noise_alpha"):
        add_noise(trainer, NoiseConfig("uniform"))


def test_resume_continues_the_noise_sequence(tmp_path, tiny_tokenizer):
    """Run 4 steps with a checkpoint at step 2; resume from it; the last two steps match the straight run."""
    config = NoiseConfig("gaussian", ALPHA, seed=1)
    straight = make_trainer(tmp_path, tiny_tokenizer, save_strategy="steps", save_steps=2)
    add_noise(straight, config)
    straight.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / NOISE_STATE_PATTERN.format(rank=0)).is_file()
    straight_logs = [e for e in straight.state.log_history if "loss" in e]

    resumed = make_trainer(tmp_path, tiny_tokenizer, save_strategy="steps", save_steps=2)
    add_noise(resumed, config)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_logs = [e for e in resumed.state.log_history if "loss" in e and e["step"] > 2]
    assert [e["noise_norm"] for e in resumed_logs] == [e["noise_norm"] for e in straight_logs[2:]]
    assert [e["loss"] for e in resumed_logs] == pytest.approx(
        [e["loss"] for e in straight_logs[2:]], rel=1e-5
    )
    final = weights(straight.model)
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value, final[key], rtol=1e-5, atol=1e-7), key


def test_schedule_follows_training_progress(tmp_path, tiny_tokenizer):
    trainer = make_trainer(tmp_path, tiny_tokenizer)
    add_noise(trainer, NoiseConfig("bernoulli", ALPHA, schedule="linear", alpha_floor=1.0))
    trainer.train()
    alphas = [e["noise_alpha"] for e in trainer.state.log_history if "loss" in e]
    assert alphas == pytest.approx([5.0, 4.0, 3.0, 2.0])


def test_peft_lora_adapters_train_with_noise(tmp_path, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_tiny_model("llama"),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    inputs = next(iter(make_trainer(tmp_path, tiny_tokenizer, model=model).get_train_dataloader()))
    model.train()
    with symnoise.attach(model, NoiseConfig("symnoise", ALPHA)) as handle:
        assert handle.model is model.get_base_model()
        model(**inputs).loss.backward()
        assert handle.last_noise_norm.item() == pytest.approx(ALPHA / SQRT3, rel=1e-5)
    # LoRA starts with B = 0, so at the first step only the B matrices receive a gradient.
    lora_b_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b_grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in lora_b_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, tiny_tokenizer):
    inputs = next(iter(make_trainer(tmp_path, tiny_tokenizer).get_train_dataloader()))
    grads = []
    for checkpointing in (False, True):
        model = make_tiny_model("llama")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        with symnoise.attach(model, NoiseConfig("symnoise", ALPHA, seed=4)):
            model(**inputs).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7), name


def test_trl_fused_outputs_fold_to_the_pair_mean(tmp_path, tiny_tokenizer):
    """TRL computes the loss and token accuracy from per-token outputs and its own labels; after the fold the loss
    equals the mean over the X + eps and X - eps halves, and the boolean top-1 hits stay booleans (those of the
    X + eps half: never averaged, so TRL's `is_top1 & mask` works)."""
    from trl.trainer.utils import add_fused_lm_head

    model = make_tiny_model("llama")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    inputs = next(iter(make_trainer(tmp_path, tiny_tokenizer).get_train_dataloader()))
    rows = inputs["input_ids"].shape[0]
    n_items = int((inputs["labels"][:, 1:] != -100).sum())
    model.train()
    recorded = []
    with symnoise.attach(model, NoiseConfig("symnoise", ALPHA, seed=0)) as handle:
        recorder = model.get_input_embeddings().register_forward_hook(
            lambda m, a, out: recorded.append(out.detach())
        )
        out = model(**inputs, fused_lm_head=True)
        recorder.remove()
        with handle.noise_off():
            halves = [
                model(
                    inputs_embeds=part,
                    attention_mask=inputs["attention_mask"],
                    labels=inputs["labels"],
                    fused_lm_head=True,
                )
                for part in (recorded[-1][:rows], recorded[-1][rows:])
            ]
    assert out.log_probs.shape[0] == rows
    loss = -out.log_probs.sum() / n_items
    assert loss.item() == pytest.approx(
        sum(-h.log_probs.sum().item() / n_items for h in halves) / 2, rel=1e-5
    )
    assert out.is_top1.dtype == torch.bool and torch.equal(out.is_top1, halves[0].is_top1)
    assert torch.equal(out.is_top1 & out.label_mask, halves[0].is_top1 & halves[0].label_mask)


@pytest.mark.parametrize("mode", ["padded", "packing", "padding_free"])
def test_trl_sft_trainer(tmp_path, tiny_tokenizer, mode):
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": p, "completion": " " + c} for p, c in TEXTS * 2]
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=None if mode == "padding_free" else 64,
        packing=mode == "packing",
        padding_free=mode == "padding_free",
        disable_tqdm=True,
        seed=0,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=make_tiny_model("llama"),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(0.0 <= e["mean_token_accuracy"] <= 1.0 for e in logs)
    # Packed rows keep each sequence's own scale: Bernoulli noise has norm exactly alpha/sqrt(3) per sequence.
    assert all(e["noise_norm"] == pytest.approx(ALPHA / SQRT3, rel=1e-5) for e in logs)


@pytest.mark.parametrize("kind", ["gpt2", "opt", "gemma", "qwen2"])
def test_trainer_short_run_on_each_model_family(tmp_path, tiny_tokenizer, kind):
    trainer = make_trainer(tmp_path, tiny_tokenizer, model=make_tiny_model(kind), max_steps=2)
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    before = weights(trainer.model)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(e["noise_norm"] == pytest.approx(ALPHA / SQRT3, rel=1e-5) for e in logs)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
