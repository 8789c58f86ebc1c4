"""symnoise with trainers that compute their loss from the model's outputs: TRL's DPO (full model with a separate
reference, LoRA without one) and KTO, and SFT with label smoothing or a custom compute_loss_func. Tiny models, CPU,
a few steps each."""

import math

import pytest
import torch
from conftest import make_tiny_model
from datasets import Dataset

import symnoise
from symnoise import NoiseConfig
from symnoise import trainers as T
from symnoise.attach import unwrap_model
from symnoise.hf import add_noise
from symnoise.pair import fold_pair_outputs

ALPHA = 5.0
# Completions of one repeated token: the tiny model (tied, large embeddings) predicts the current token, so token
# accuracy is not always 0 and its check means something.
PREFERENCES = [
    {"prompt": "Add 12 and 30.", "chosen": " 42", "rejected": " zzzz"},
    {"prompt": "Sort 3 1 2.", "chosen": " 1 2 3", "rejected": " 1111"},
    {"prompt": "Reverse the word fox.", "chosen": " xof", "rejected": " !!!!!"},
    {"prompt": "Count to zero.", "chosen": " 000000", "rejected": " 1 2 3"},
]
SFT_ROWS = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PREFERENCES]
IGNORED_LOG_KEYS = {
    "noise_norm",
    "noise_alpha",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
}


def tiny_policy():
    model = make_tiny_model("llama", tie_word_embeddings=True)
    with torch.no_grad():  # embeddings that stand out of the noise: the model predicts the current token
        model.get_input_embeddings().weight.mul_(20)
    return model


def common_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataset_num_proc=None,
        bf16=False,
    )
    values.update(overrides)
    return values


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def dpo_trainer(tmp_path, tokenizer, setup, **overrides):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common_args(tmp_path, **overrides))
    reference = dict(ref_model=tiny_policy()) if setup == "full" else dict(peft_config=lora_config())
    return DPOTrainer(
        model=tiny_policy(),
        args=args,
        train_dataset=Dataset.from_list(PREFERENCES * 2),
        processing_class=tokenizer,
        **reference,
    )


def sft_trainer(tmp_path, tokenizer, **overrides):
    from trl import SFTConfig, SFTTrainer

    loss_func = overrides.pop("compute_loss_func", None)
    args = SFTConfig(**common_args(tmp_path, max_length=64, **overrides))
    return SFTTrainer(
        model=tiny_policy(),
        args=args,
        train_dataset=Dataset.from_list(SFT_ROWS * 2),
        processing_class=tokenizer,
        compute_loss_func=loss_func,
    )


def focal_loss(outputs, labels, num_items_in_batch=None):
    """A loss computed from the logits, nonlinear in the log-probabilities (focal loss, gamma = 2)."""
    logits = outputs.logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = -((1 - logp.exp()) ** 2) * logp
    return (per_token * mask).sum() / (num_items_in_batch or mask.sum())


class PassSpy:
    """Records every forward of the policy (and of a separate reference model): whether it recorded gradients,
    whether it was the reference, and the noise its first decoder layer saw (its input minus the clean embeddings)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.passes = []
        self._clean = None
        self._hooks = []
        self._watch(unwrap_model(trainer.model), "policy")
        if getattr(trainer, "ref_model", None) is not None:
            self._watch(unwrap_model(trainer.ref_model), "ref_model")

    def _watch(self, model, name):
        # Registered before train() attaches the noise, so the embedding hook sees the clean output.
        self._hooks.append(model.get_input_embeddings().register_forward_hook(self._on_embeddings))
        self._hooks.append(
            model.model.layers[0].register_forward_pre_hook(
                lambda module, args, kwargs, name=name: self._on_layer(name, args, kwargs), with_kwargs=True
            )
        )

    def _on_embeddings(self, module, args, output):
        self._clean = output.detach().clone()

    def _on_layer(self, name, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        peft = self.trainer.model if hasattr(self.trainer.model, "peft_config") else None
        adapters_off = peft is not None and (peft.active_adapter == "ref" or _adapters_disabled(peft))
        role = "reference" if name == "ref_model" or adapters_off else "policy"
        self.passes.append(
            {"role": role, "grad": torch.is_grad_enabled(), "input": hidden, "noise": hidden - self._clean}
        )

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def _adapters_disabled(peft_model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(m.disable_adapters for m in peft_model.modules() if isinstance(m, BaseTunerLayer))


class StepSpy:
    """Wraps trainer.training_step (after add_noise) to keep each step's inputs and returned loss."""

    def __init__(self, trainer):
        self.steps = []
        step = trainer.training_step

        def recording(model, inputs, *args, **kwargs):
            saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            loss = step(model, inputs, *args, **kwargs)
            self.steps.append((saved, loss.detach().clone()))
            return loss

        trainer.training_step = recording


def trainable(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def losses_logged(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def replay(trainer, inputs, noised_inputs, backward_weight=None):
    """The trainer's own loss on ``inputs`` with the policy's gradient-recording forwards fed the recorded
    ``noised_inputs`` (first decoder layer inputs, in order), every other forward clean; noise is off. With
    ``backward_weight``, ``loss * backward_weight`` is also backpropagated (gradients accumulate)."""
    layer = unwrap_model(trainer.model).model.layers[0]
    queue = list(noised_inputs)

    def inject(module, args, kwargs):
        if not torch.is_grad_enabled() or _is_reference(trainer):
            return None
        live = args[0] if args else kwargs["hidden_states"]
        hidden = queue.pop(0) + (
            live - live.detach()
        )  # the recorded values, the gradient of the live embeddings
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    hook = layer.register_forward_pre_hook(inject, with_kwargs=True)
    try:
        trainer.model.train()
        with torch.enable_grad(), symnoise.noise_off(trainer.model):
            loss = trainer.compute_loss(trainer.model, dict(inputs))
            if backward_weight is not None:
                (loss * backward_weight).backward()
    finally:
        hook.remove()
    assert not queue
    return loss.detach()


def _is_reference(trainer):
    peft = trainer.model if hasattr(trainer.model, "peft_config") else None
    return peft is not None and (peft.active_adapter == "ref" or _adapters_disabled(peft))


# ---------------------------------------------------------------------------------------------------------- DPO
@pytest.mark.floor
@pytest.mark.parametrize("setup", ["full", "lora"])
@pytest.mark.parametrize("method", ["uniform", "symnoise"])
def test_dpo_noises_every_policy_pass_and_no_reference_pass(tmp_path, tiny_tokenizer, setup, method):
    trainer = dpo_trainer(tmp_path, tiny_tokenizer, setup)
    noise = add_noise(trainer, NoiseConfig(method, ALPHA, seed=0))
    assert noise.config.execution == ("paired" if method == "symnoise" else "concat")
    spy = PassSpy(trainer)
    before = trainable(trainer.model)
    trainer.train()
    spy.remove()

    logs = losses_logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(not torch.equal(before[k], v) for k, v in trainable(trainer.model).items())
    policy = [p for p in spy.passes if p["role"] == "policy"]
    reference = [p for p in spy.passes if p["role"] == "reference"]
    per_step = 2 if method == "symnoise" else 1
    assert len(policy) == 2 * per_step and len(reference) == 2 * per_step
    assert all(p["grad"] and p["noise"].abs().max() > 0.01 for p in policy)
    assert all(not p["grad"] and torch.count_nonzero(p["noise"]) == 0 for p in reference)
    if method == "symnoise":  # each step: X + eps, then X - eps with the same eps
        for plus, minus in zip(policy[0::2], policy[1::2], strict=True):
            torch.testing.assert_close(minus["noise"], -plus["noise"], rtol=0, atol=1e-5)


def comparable_logs(trainer):
    return [{k: v for k, v in e.items() if k not in IGNORED_LOG_KEYS} for e in trainer.state.log_history]


@pytest.fixture(scope="module")
def plain_dpo_logs(tmp_path_factory, tiny_tokenizer):
    """The logs of plain DPO (no symnoise), once per setup."""
    logs = {}
    for setup in ("full", "lora"):
        trainer = dpo_trainer(tmp_path_factory.mktemp(f"plain-{setup}"), tiny_tokenizer, setup)
        trainer.train()
        logs[setup] = comparable_logs(trainer)
    return logs


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["full", "lora"])
@pytest.mark.parametrize("method", ["uniform", "symnoise"])
def test_dpo_with_alpha_zero_logs_exactly_plain_dpo(tmp_path, tiny_tokenizer, plain_dpo_logs, setup, method):
    noised = dpo_trainer(tmp_path, tiny_tokenizer, setup)
    add_noise(noised, NoiseConfig(method, 0.0, seed=0))
    noised.train()
    assert comparable_logs(noised) == plain_dpo_logs[setup]
    assert {"loss", "rewards/margins", "mean_token_accuracy", "num_tokens"} <= set(plain_dpo_logs[setup][0])


@pytest.mark.parametrize("setup", ["full", "lora"])
def test_dpo_symnoise_loss_and_metrics_are_the_mean_of_the_signed_passes(tmp_path, tiny_tokenizer, setup):
    """One step at learning rate 0: the trained loss equals the mean of TRL's DPO loss replayed on the recorded
    X + eps and X - eps inputs (noise off, clean reference), and every logged DPO metric is the mean of the two
    replays' metrics; num_tokens counts the batch once."""
    trainer = dpo_trainer(tmp_path, tiny_tokenizer, setup, max_steps=1, learning_rate=0.0)
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    steps = StepSpy(trainer)
    spy = PassSpy(trainer)
    trainer.train()
    spy.remove()

    ((inputs, trained_loss),) = steps.steps
    policy = [p["input"] for p in spy.passes if p["role"] == "policy"]
    assert len(policy) == 2
    trainer._metrics["train"].clear()
    halves = [replay(trainer, inputs, [hidden]) for hidden in policy]
    assert not torch.equal(halves[0], halves[1])
    torch.testing.assert_close(trained_loss, (halves[0] + halves[1]) / 2, rtol=1e-6, atol=0)

    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(trained_loss.item(), rel=1e-6)
    replayed = trainer._metrics["train"]
    assert logged["mean_token_accuracy"] > 0
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "entropy",
        "mean_token_accuracy",
    ):
        assert len(replayed[key]) == 2
        assert logged[key] == pytest.approx(sum(replayed[key]) / 2, rel=1e-5, abs=1e-9), key
    assert logged["num_tokens"] == inputs["attention_mask"].sum().item()


@pytest.mark.slow
def test_dpo_symnoise_gradient_accumulation_gives_the_mean_of_the_pair_losses(tmp_path, tiny_tokenizer):
    """Two micro-batches of 2 pairs: the accumulated gradient is the gradient of the mean over micro-batches of the
    mean of the two signed passes' DPO losses, and the logged loss is that mean."""
    from transformers import TrainerCallback

    trainer = dpo_trainer(
        tmp_path,
        tiny_tokenizer,
        "full",
        max_steps=1,
        learning_rate=0.0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    grads = {}

    class KeepGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update(
                {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
            )

    trainer.add_callback(KeepGradients())
    steps = StepSpy(trainer)
    spy = PassSpy(trainer)
    trainer.train()
    spy.remove()

    policy = [p["input"] for p in spy.passes if p["role"] == "policy"]
    assert len(steps.steps) == 2 and len(policy) == 4 and grads
    trainer.model.zero_grad()
    total = 0.0
    for (inputs, returned), pair in zip(steps.steps, (policy[:2], policy[2:]), strict=True):
        halves = [replay(trainer, inputs, [hidden], backward_weight=0.25) for hidden in pair]
        torch.testing.assert_close(returned, (halves[0] + halves[1]) / 4, rtol=1e-6, atol=0)
        total += returned.item()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(total, rel=1e-6)
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-8)


@pytest.mark.floor
def test_dpo_reference_on_an_unchecked_trl_version_is_refused(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(T, "trl_version", lambda: (2, 0))
    lora = dpo_trainer(tmp_path / "lora", tiny_tokenizer, "lora")
    with pytest.raises(RuntimeError, match="cannot promise a clean reference"):
        add_noise(lora, NoiseConfig("symnoise", ALPHA))
    # A separate reference model has no hooks, whatever the TRL version.
    add_noise(dpo_trainer(tmp_path / "full", tiny_tokenizer, "full"), NoiseConfig("symnoise", ALPHA))


def test_dpo_step_without_a_recognised_reference_pass_fails(tmp_path, tiny_tokenizer, monkeypatch):
    trainer = dpo_trainer(tmp_path, tiny_tokenizer, "lora", max_steps=1)
    add_noise(trainer, NoiseConfig("uniform", ALPHA, seed=0))
    monkeypatch.setattr(T.CleanPassGuard, "reference_adapters_active", lambda self: False)
    with pytest.raises(RuntimeError, match="without a reference forward"):
        trainer.train()


@pytest.mark.slow
def test_kto_lora_reference_and_kl_passes_stay_clean(tmp_path, tiny_tokenizer):
    from trl import KTOConfig, KTOTrainer

    rows = [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
        for p in PREFERENCES
        for key in ("chosen", "rejected")
    ]
    trainer = KTOTrainer(
        model=tiny_policy(),
        args=KTOConfig(**common_args(tmp_path)),
        processing_class=tiny_tokenizer,
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(),
    )
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    spy = PassSpy(trainer)
    trainer.train()
    spy.remove()
    assert all(math.isfinite(e["loss"]) for e in losses_logged(trainer))
    trained = [p for p in spy.passes if p["grad"]]
    gradient_free = [p for p in spy.passes if not p["grad"]]
    assert len(trained) == 4 and all(p["role"] == "policy" and p["noise"].abs().max() > 0.01 for p in trained)
    assert any(p["role"] == "reference" for p in gradient_free)
    assert all(torch.count_nonzero(p["noise"]) == 0 for p in gradient_free)


@pytest.mark.slow
def test_orpo_without_reference_runs_the_pair_around_its_loss(tmp_path, tiny_tokenizer):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    trainer = ORPOTrainer(
        model=tiny_policy(),
        args=ORPOConfig(**common_args(tmp_path)),
        processing_class=tiny_tokenizer,
        train_dataset=Dataset.from_list(PREFERENCES * 2),
    )
    assert add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0)).config.execution == "paired"
    spy = PassSpy(trainer)
    trainer.train()
    spy.remove()
    logs = losses_logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) and "rewards/margins" in e for e in logs)
    assert len(spy.passes) == 4 and all(p["grad"] and p["role"] == "policy" for p in spy.passes)
    for plus, minus in zip(spy.passes[0::2], spy.passes[1::2], strict=True):
        assert plus["noise"].abs().max() > 0.01
        torch.testing.assert_close(minus["noise"], -plus["noise"], rtol=0, atol=1e-5)


@pytest.mark.floor
def test_symnoise_is_refused_where_training_step_builds_its_own_batch(tmp_path, tiny_tokenizer):
    from test_hf_integration import make_trainer
    from transformers import Trainer

    # Stands for TRL's GRPOTrainer: generation inside training_step means a second pass sees other samples.
    online = type("GRPOTrainer", (Trainer,), {"__module__": "trl.trainer.grpo_trainer"})
    plain = make_trainer(tmp_path, tiny_tokenizer)
    trainer = online(model=plain.model, args=plain.args, train_dataset=plain.train_dataset)
    with pytest.raises(ValueError, match="GRPOTrainer builds its batches inside training_step"):
        add_noise(trainer, NoiseConfig("symnoise", ALPHA))
    assert add_noise(trainer, NoiseConfig("uniform", ALPHA)).config.execution == "concat"


# ---------------------------------------------------------------------------------------------------------- SFT
@pytest.mark.floor
@pytest.mark.parametrize("loss", ["label_smoothing", "compute_loss_func"])
def test_sft_loss_computed_from_logits_trains_with_symnoise(tmp_path, tiny_tokenizer, loss):
    options = (
        dict(label_smoothing_factor=0.1) if loss == "label_smoothing" else dict(compute_loss_func=focal_loss)
    )
    trainer = sft_trainer(tmp_path, tiny_tokenizer, **options)
    noise = add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    assert noise.config.execution == "paired"
    spy = PassSpy(trainer)
    before = trainable(trainer.model)
    trainer.train()
    spy.remove()
    logs = losses_logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(0 <= e["mean_token_accuracy"] <= 1 for e in logs)
    assert any(not torch.equal(before[k], v) for k, v in trainable(trainer.model).items())
    trained = [p for p in spy.passes if p["grad"]]
    probes = [p for p in spy.passes if not p["grad"]]  # TRL's metric-only forwards
    assert len(trained) == 4 and len(probes) == 4
    assert all(p["noise"].abs().max() > 0.01 for p in trained)
    assert all(torch.count_nonzero(p["noise"]) == 0 for p in probes)


@pytest.mark.parametrize("loss", ["label_smoothing", "compute_loss_func"])
def test_sft_loss_from_logits_is_the_mean_of_the_two_halves(tmp_path, tiny_tokenizer, loss):
    options = (
        dict(label_smoothing_factor=0.1) if loss == "label_smoothing" else dict(compute_loss_func=focal_loss)
    )
    trainer = sft_trainer(tmp_path, tiny_tokenizer, max_steps=1, learning_rate=0.0, **options)
    add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0))
    steps = StepSpy(trainer)
    spy = PassSpy(trainer)
    trainer.train()
    spy.remove()
    ((inputs, trained_loss),) = steps.steps
    plus, minus = [p for p in spy.passes if p["grad"]]
    torch.testing.assert_close(minus["noise"], -plus["noise"], rtol=0, atol=1e-5)
    halves = [replay(trainer, inputs, [p["input"]]) for p in (plus, minus)]
    assert not torch.equal(halves[0], halves[1])
    torch.testing.assert_close(trained_loss, (halves[0] + halves[1]) / 2, rtol=1e-6, atol=0)


def test_plain_trainer_with_label_smoothing_trains_with_symnoise(tmp_path, tiny_tokenizer):
    from test_hf_integration import make_trainer

    trainer = make_trainer(tmp_path, tiny_tokenizer, max_steps=2, label_smoothing_factor=0.1)
    assert add_noise(trainer, NoiseConfig("symnoise", ALPHA, seed=0)).config.execution == "paired"
    trainer.train()
    assert len(losses_logged(trainer)) == 2 and all(math.isfinite(e["loss"]) for e in losses_logged(trainer))


# ---------------------------------------------------------------------------------------------------------- units
@pytest.mark.floor
def test_execution_is_paired_exactly_where_the_trainer_computes_the_loss(tmp_path, tiny_tokenizer):
    from test_hf_integration import make_trainer
    from transformers import Trainer

    class OwnLoss(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    plain = make_trainer(tmp_path, tiny_tokenizer)
    assert T.loss_outside_model(plain) is None
    assert T.loss_outside_model(sft_trainer(tmp_path, tiny_tokenizer)) is None
    assert "label_smoothing" in T.loss_outside_model(
        make_trainer(tmp_path, tiny_tokenizer, label_smoothing_factor=0.1)
    )
    assert "compute_loss_func" in T.loss_outside_model(
        sft_trainer(tmp_path, tiny_tokenizer, compute_loss_func=focal_loss)
    )
    assert "dft" in T.loss_outside_model(sft_trainer(tmp_path, tiny_tokenizer, loss_type="dft"))
    assert "DPOTrainer" in T.loss_outside_model(dpo_trainer(tmp_path, tiny_tokenizer, "full"))
    own = OwnLoss(model=plain.model, args=plain.args, train_dataset=plain.train_dataset)
    assert "overrides compute_loss" in T.loss_outside_model(own)
    sft = sft_trainer(tmp_path, tiny_tokenizer)

    class OwnSFT(type(sft)):
        def compute_loss(self, *args, **kwargs):
            return super().compute_loss(*args, **kwargs)

    sft.__class__ = OwnSFT
    assert "OwnSFT overrides compute_loss" in T.loss_outside_model(sft)
    config = NoiseConfig("symnoise", ALPHA)
    assert T.execution_for(plain, config) is config
    assert T.execution_for(own, config).execution == "paired"
    assert T.execution_for(own, NoiseConfig("uniform", ALPHA)).execution == "concat"


def test_fold_never_averages_boolean_or_integer_outputs():
    rows, length = 2, 3
    hits = torch.tensor([[True, False, True], [False, False, True], [False, True, True], [True, True, False]])
    ids = torch.arange(12).view(4, 3)
    logps = torch.arange(12, dtype=torch.float32).view(4, 3)
    out = fold_pair_outputs({"is_top1": hits, "ids": ids, "log_probs": logps}, 0, torch.Size([rows, length]))
    assert out["is_top1"].dtype == torch.bool and torch.equal(out["is_top1"], hits[:rows])
    assert out["ids"].dtype == torch.int64 and torch.equal(out["ids"], ids[:rows])
    torch.testing.assert_close(out["log_probs"], (logps[:rows] + logps[rows:]) / 2)
