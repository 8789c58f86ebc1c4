"""The attachment on real (tiny) transformers models: where noise goes, equivalences, lifecycle, errors."""

import math

import pytest
import torch
from conftest import make_tiny_model

import symnoise
from symnoise import NoiseConfig, attach
from symnoise.noise_stream import derive_seed

ALPHA = 5.0
SQRT3 = math.sqrt(3.0)


def batch(seed=0, rows=3, seq=10, vocab=400, pad_from=(None, 6, 3), prompt=4):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    mask = torch.ones_like(ids)
    for row, start in enumerate(pad_from[:rows]):
        if start is not None:
            mask[row, start:] = 0
            ids[row, start:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class EmbeddingRecorder:
    """Records what the input embedding module returns, after symnoise's hook has run."""

    def __init__(self, model):
        self.outputs = []
        embeddings = model.get_input_embeddings()
        hook = embeddings.register_forward_hook(
            lambda module, args, out: self.outputs.append(out.detach().clone())
        )
        # Hooks run in registration order; keep this one last so it sees the output after symnoise's hook.
        embeddings.register_forward_pre_hook(
            lambda module, args: embeddings._forward_hooks.move_to_end(hook.id)
        )

    def clean(self, model, inputs):
        with torch.no_grad():
            return model.get_input_embeddings()(inputs["input_ids"])


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(model, inputs, config=None, paired=False):
    model.zero_grad(set_to_none=True)
    model.train()
    if config is None:
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), grads(model)
    with attach(model, config) as handle:
        if paired:
            total = 0
            for weight in handle.paired_passes():
                part = model(**inputs).loss * weight
                part.backward()
                total = total + part.detach()
            return total, grads(model)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), grads(model)


@pytest.fixture
def llama():
    return make_tiny_model("llama")


@pytest.mark.parametrize("method", ["uniform", "gaussian", "bernoulli", "symnoise"])
@pytest.mark.parametrize("execution", ["concat", "paired"])
def test_alpha_zero_equals_no_noise(llama, method, execution):
    inputs = batch()
    base_loss, base_grads = loss_and_grads(llama, inputs)
    cfg = NoiseConfig(method, alpha=0, execution=execution)
    loss, noisy_grads = loss_and_grads(llama, inputs, cfg, paired=cfg.symmetric and execution == "paired")
    assert torch.equal(loss, base_loss)
    assert base_grads.keys() == noisy_grads.keys()
    assert all(torch.equal(base_grads[k], noisy_grads[k]) for k in base_grads)


def test_symnoise_pairs_are_exact_negatives_and_padding_is_clean(llama):
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig("symnoise", ALPHA, seed=0)):
        llama(**inputs)
    doubled = recorder.outputs[-1]
    clean = recorder.clean(llama, inputs)
    plus, minus = doubled[:3] - clean, doubled[3:] - clean
    # The noise is built as an exact pair; measured through (E + n) - E it carries float rounding.
    assert torch.allclose(plus, -minus, rtol=0, atol=1e-6)
    real = inputs["attention_mask"].bool()
    assert torch.all(plus[~real] == 0)
    # Bernoulli +-1 scaled by alpha/sqrt(L d)/sqrt(3): every example's noise norm is exactly alpha/sqrt(3).
    norms = plus.square().sum(dim=(-1, -2)).sqrt()
    assert norms.tolist() == pytest.approx([ALPHA / SQRT3] * 3, rel=1e-5)
    # Each element is +-scale for its example's real length.
    d = clean.shape[-1]
    for row, length in enumerate(real.sum(1).tolist()):
        scale = ALPHA / math.sqrt(length * d) / SQRT3
        assert torch.allclose(plus[row][real[row]].abs(), torch.full((length, d), scale), rtol=1e-5)


def test_symnoise_loss_is_the_mean_of_the_two_halves(llama):
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig("symnoise", ALPHA, seed=0)) as handle:
        out = llama(**inputs)
        assert out.logits.shape[0] == 3  # the caller's batch: metrics from logits keep matching labels
        noisy = recorder.outputs[-1]
        with handle.noise_off():
            plus = llama(
                inputs_embeds=noisy[:3], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
            )
            minus = llama(
                inputs_embeds=noisy[3:], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
            )
    assert out.loss.item() == pytest.approx((plus.loss.item() + minus.loss.item()) / 2, rel=1e-6)
    assert torch.allclose(out.logits, plus.logits, atol=1e-5)


def test_symnoise_loss_with_num_items_in_batch_counts_both_halves(llama):
    inputs = batch()
    n_items = int((inputs["labels"][:, 1:] != -100).sum())
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig("symnoise", ALPHA, seed=0)) as handle:
        loss = llama(**inputs, num_items_in_batch=n_items).loss
        noisy = recorder.outputs[-1]
        with handle.noise_off():
            halves = [
                llama(
                    inputs_embeds=part,
                    attention_mask=inputs["attention_mask"],
                    labels=inputs["labels"],
                    num_items_in_batch=n_items,
                ).loss
                for part in (noisy[:3], noisy[3:])
            ]
    assert loss.item() == pytest.approx((halves[0].item() + halves[1].item()) / 2, rel=1e-6)


@pytest.mark.parametrize("method", ["symnoise", "uniform"])
def test_paired_and_concat_give_the_same_gradients(llama, method):
    inputs = batch()
    cfg = dict(method=method, alpha=ALPHA, seed=7, symmetric=True)
    concat_loss, concat_grads = loss_and_grads(llama, inputs, NoiseConfig(**cfg, execution="concat"))
    paired_loss, paired_grads = loss_and_grads(
        llama, inputs, NoiseConfig(**cfg, execution="paired"), paired=True
    )
    assert paired_loss.item() == pytest.approx(concat_loss.item(), rel=1e-5)
    for name in concat_grads:
        assert torch.allclose(paired_grads[name], concat_grads[name], rtol=1e-4, atol=1e-7), name


def test_paired_execution_refuses_a_plain_forward(llama):
    llama.train()
    with attach(llama, NoiseConfig("symnoise", ALPHA, execution="paired")):
        with pytest.raises(RuntimeError, match="paired_passes"):
            llama(**batch())


def test_symmetric_pair_needs_labels(llama):
    llama.train()
    inputs = batch()
    inputs.pop("labels")
    with attach(llama, NoiseConfig("symnoise", ALPHA)) as handle:
        with pytest.raises(ValueError, match="needs labels"):
            llama(**inputs)
        with handle.noise_off():
            llama(**inputs)  # a reference pass with the noise switched off is fine


def test_padded_length_mode_reproduces_transformers_neftune(llama):
    from transformers.integrations.neftune import neftune_post_forward_hook

    inputs = batch()
    embeddings = llama.get_input_embeddings()
    llama.train()
    embeddings.neftune_noise_alpha = ALPHA
    hook = embeddings.register_forward_hook(neftune_post_forward_hook)
    recorder = EmbeddingRecorder(llama)
    # Our first draw on the CPU starts from derive_seed(stream seed, 0): the same state as torch.manual_seed of it.
    torch.manual_seed(derive_seed(derive_seed(123, 0), 0))
    llama(**inputs)
    hook.remove()
    del embeddings.neftune_noise_alpha
    theirs = recorder.outputs[-1]
    with attach(llama, NoiseConfig("uniform", ALPHA, length_mode="padded", seed=123)):
        llama(**inputs)
    ours = recorder.outputs[-1]
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert not torch.equal(ours, recorder.clean(llama, inputs))
    # And our default differs from it exactly where the papers' code does: padding stays clean.
    with attach(llama, NoiseConfig("uniform", ALPHA)):
        llama(**inputs)
    tokens_mode = recorder.outputs[-1] - recorder.clean(llama, inputs)
    assert torch.all(tokens_mode[inputs["attention_mask"] == 0] == 0)


def test_transformers_neftune_and_symnoise_cannot_both_be_on(llama):
    llama.get_input_embeddings().neftune_noise_alpha = 5
    with pytest.raises(RuntimeError, match="neftune_noise_alpha"):
        attach(llama, NoiseConfig("uniform"))


def packed_and_padded(lengths, vocab=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, vocab, (n,), generator=g) for n in lengths]
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    padded = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    packed_labels = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in seqs]).unsqueeze(0)
    packed = {
        "input_ids": torch.cat(seqs).unsqueeze(0),
        "labels": packed_labels,
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        "use_cache": False,
    }
    return padded, packed


@pytest.mark.parametrize("method", ["bernoulli", "symnoise"])
@pytest.mark.parametrize("varlen", [False, True])
def test_packed_row_gets_per_sequence_noise(llama, method, varlen):
    """A packed row keeps each sequence's own scale. Under eager attention (this model) SymNoise doubles it into
    a second row, with or without cu_seq_lens (one (2T)^2 dense mask would cost twice two T^2 ones); only
    FlashAttention inferring the sequences of one row from position ids needs the copy in the same row
    (tests/test_packed_attention.py)."""
    lengths = [5, 9, 3]
    total = sum(lengths)
    padded, packed = packed_and_padded(lengths)
    if varlen:
        add_cu_seq_lens(packed)
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig(method, ALPHA, seed=0)):
        out = llama(**packed)
    along = 0
    ids = packed["input_ids"]
    seen = torch.cat([ids, ids], dim=along) if method == "symnoise" else ids
    noise = recorder.outputs[-1] - recorder.clean(llama, {"input_ids": seen})
    first = noise.narrow(along, 0, ids.shape[along])
    per_sequence = [chunk.square().sum().sqrt().item() for chunk in first[0].split(lengths)]
    # Not alpha/sqrt(3)/sqrt(3 sequences), as with the packed length: each sequence keeps its own scale.
    assert per_sequence == pytest.approx([ALPHA / SQRT3] * 3, rel=1e-5)
    if method == "symnoise":
        assert torch.allclose(
            noise.narrow(along, ids.shape[along], ids.shape[along]), -first, rtol=0, atol=1e-6
        )
    assert out.logits.shape[:2] == (1, total)


def add_cu_seq_lens(packed):
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    packed.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)


@pytest.mark.parametrize("varlen", [False, True])
def test_packed_symnoise_loss_equals_padded_symnoise_loss_at_alpha_zero_limit(llama, varlen):
    """With negligible noise the doubled packed row must give the padded loss: no attention across the copy
    boundary, and the copy's first token is not a target of the original's last."""
    padded, packed = packed_and_padded([5, 9, 3])
    packed.pop("use_cache")  # symnoise turns the cache off itself for a doubled packed row
    if varlen:
        add_cu_seq_lens(packed)
    llama.train()
    assert llama(**packed, use_cache=False).loss.item() == pytest.approx(
        llama(**padded).loss.item(), rel=1e-6
    )
    with attach(llama, NoiseConfig("symnoise", 1e-30, seed=0)):
        packed_loss = llama(**packed).loss
        padded_loss = llama(**padded).loss
    assert packed_loss.item() == pytest.approx(padded_loss.item(), rel=1e-5)


def test_region_response_noises_only_response_tokens(llama):
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig("bernoulli", ALPHA, region="response")):
        llama(**inputs)
    noise = recorder.outputs[-1] - recorder.clean(llama, inputs)
    response = inputs["labels"] != -100
    assert torch.all(noise[~response] == 0)
    # Row 2 is padded before its prompt ends, so it has no response token and no noise.
    assert noise.square().sum(dim=(-1, -2)).sqrt().tolist() == pytest.approx(
        [ALPHA / SQRT3] * 2 + [0], rel=1e-5
    )
    with attach(llama, NoiseConfig("bernoulli", ALPHA, region="prompt")):
        llama(**inputs)
    noise = recorder.outputs[-1] - recorder.clean(llama, inputs)
    assert torch.all(noise[response | (inputs["attention_mask"] == 0)] == 0)


def test_inputs_embeds_are_noised_once(llama):
    inputs = batch()
    embeds = llama.get_input_embeddings()(inputs["input_ids"]).detach()
    captured = []
    llama.model.register_forward_pre_hook(
        lambda m, a, k: captured.append(k["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    llama.train()
    with attach(llama, NoiseConfig("bernoulli", ALPHA)):
        llama(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    noise = captured[-1] - embeds
    assert noise.square().sum(dim=(-1, -2)).sqrt().tolist() == pytest.approx([ALPHA / SQRT3] * 3, rel=1e-5)


def test_no_noise_in_eval_generate_or_noise_off(llama, tiny_tokenizer):
    inputs = batch()
    llama.eval()
    with torch.no_grad():
        clean_eval = llama(**inputs).logits
        clean_gen = llama.generate(
            inputs["input_ids"][:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    with attach(llama, NoiseConfig("uniform", 50.0)) as handle:
        with torch.no_grad():
            assert torch.equal(llama(**inputs).logits, clean_eval)
            llama.train()  # generate() is clean even when called in training mode
            assert torch.equal(
                llama.generate(
                    inputs["input_ids"][:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0
                ),
                clean_gen,
            )
            with handle.noise_off(), symnoise.noise_off(llama):
                llama.eval()
                train_clean = llama.train()(**inputs).logits
            assert not torch.equal(llama(**inputs).logits, train_clean)  # and noise is really on otherwise
    llama.eval()


def test_detach_restores_the_model_exactly(llama):
    inputs = batch()
    before_state = {k: v.clone() for k, v in llama.state_dict().items()}
    hooks_before = (
        len(llama._forward_hooks),
        len(llama._forward_pre_hooks),
        len(llama.get_input_embeddings()._forward_hooks),
    )
    llama.train()
    torch.manual_seed(0)
    reference = llama(**inputs).loss
    handle = attach(llama, NoiseConfig("symnoise", ALPHA))
    assert llama.state_dict().keys() == before_state.keys()  # nothing of the noise is saved
    llama(**inputs)
    handle.remove()
    handle.remove()
    assert (
        len(llama._forward_hooks),
        len(llama._forward_pre_hooks),
        len(llama.get_input_embeddings()._forward_hooks),
    ) == hooks_before
    assert "generate" not in vars(llama) and symnoise.get_handle(llama) is None
    torch.manual_seed(0)
    assert torch.equal(llama(**inputs).loss, reference)
    assert all(torch.equal(v, before_state[k]) for k, v in llama.state_dict().items())


def test_hooks_are_removed_when_training_raises(llama):
    with pytest.raises(ZeroDivisionError):
        with attach(llama, NoiseConfig("symnoise", ALPHA)):
            llama.train()
            llama(**batch())
            raise ZeroDivisionError
    assert symnoise.get_handle(llama) is None and not llama._forward_hooks
    # A failure inside the forward leaves no stale call state behind either.
    with attach(llama, NoiseConfig("uniform", ALPHA)) as handle:
        with pytest.raises(IndexError):  # token id beyond the vocabulary
            llama(input_ids=torch.full((1, 4), 10_000))
        assert handle._calls == []


def test_attaching_twice_is_refused(llama):
    with attach(llama, NoiseConfig("uniform")):
        with pytest.raises(RuntimeError, match="already attached"):
            attach(llama, NoiseConfig("gaussian"))


def test_model_without_input_embeddings_is_refused():
    with pytest.raises(TypeError, match="no input embeddings"):
        attach(torch.nn.Linear(4, 4), NoiseConfig("uniform"))
    with pytest.raises(TypeError, match="NoiseConfig"):
        attach(make_tiny_model("llama"), {"method": "uniform"})


def test_same_seed_same_noise_and_state_round_trip(llama):
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()

    def noise_of(handle):
        llama(**inputs)
        return recorder.outputs[-1] - recorder.clean(llama, inputs)

    with attach(llama, NoiseConfig("gaussian", ALPHA, seed=11)) as h:
        first, second = noise_of(h), noise_of(h)
    with attach(llama, NoiseConfig("gaussian", ALPHA, seed=11)) as h:
        assert torch.equal(noise_of(h), first)
        saved = h.state_dict()
        after_save = noise_of(h)
        assert torch.equal(after_save, second)
    with attach(llama, NoiseConfig("gaussian", ALPHA, seed=12)) as h:
        assert not torch.equal(noise_of(h), first)
    with attach(llama, NoiseConfig("gaussian", ALPHA, seed=99)) as h:
        h.load_state_dict(saved)
        assert torch.equal(noise_of(h), second)  # a resumed run continues the same sequence


def test_each_rank_draws_different_noise(monkeypatch):
    assert len({derive_seed(0, rank) for rank in range(8)}) == 8
    assert derive_seed(0, 1) == derive_seed(0, 1)
    model = make_tiny_model("llama")
    handles = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with attach(model, NoiseConfig("uniform", seed=5)) as h:
            handles.append(h.seed)
    assert handles[0] != handles[1]


def test_schedule_changes_alpha_and_reaches_zero_noise(llama):
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig("bernoulli", ALPHA, schedule="linear", alpha_floor=0.0)) as h:
        assert h.set_progress(0.5) == pytest.approx(2.5)
        llama(**inputs)
        noise = recorder.outputs[-1] - recorder.clean(llama, inputs)
        assert noise.square().sum(dim=(-1, -2)).sqrt().tolist() == pytest.approx([2.5 / SQRT3] * 3, rel=1e-5)
        h.set_progress(1.0)
        llama(**inputs)
        assert torch.equal(recorder.outputs[-1], recorder.clean(llama, inputs))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "gemma", "qwen2"])
def test_every_model_family_gets_the_specified_noise(kind):
    """Noise lands on the embedding module's output, i.e. what the first layer sees: for Gemma after its
    sqrt(d) scale (the module applies it), so the norm is alpha/sqrt(3) there too."""
    model = make_tiny_model(kind)
    inputs = batch()
    recorder = EmbeddingRecorder(model)
    model.train()
    with attach(model, NoiseConfig("symnoise", ALPHA, seed=0)) as handle:
        out = model(**inputs)
        assert torch.isfinite(out.loss) and out.logits.shape[0] == 3
        assert handle.last_noise_norm.item() == pytest.approx(ALPHA / SQRT3, rel=1e-5)
    noise = recorder.outputs[-1][:3] - recorder.clean(model, inputs)
    assert noise.square().sum(dim=(-1, -2)).sqrt().tolist() == pytest.approx([ALPHA / SQRT3] * 3, rel=1e-4)


@pytest.mark.parametrize("method", ["uniform", "symnoise"])
def test_the_logged_norm_keeps_no_embedding_sized_tensor(llama, method):
    """Between the forward and the read of the logged norm (the end of a logging step), the handle holds (B, T)
    numbers, not the (B, T, d) noise: that would stay allocated through every backward pass. The norm read later is
    the one of the noise that was added (the mean over the sequences of its L2 norm)."""
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    llama.train()
    with attach(llama, NoiseConfig(method, ALPHA, seed=0)) as handle:
        llama(**inputs).loss.backward()
        rows, seq = inputs["input_ids"].shape
        held = [t for t in handle._norm_inputs if isinstance(t, torch.Tensor)]
        assert held and max(t.numel() for t in held) <= rows * seq
        norm = handle.last_noise_norm.item()
    noise = recorder.outputs[-1][:rows] - recorder.clean(llama, inputs)
    assert norm == pytest.approx(noise.square().sum(dim=(-1, -2)).sqrt().mean().item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype):
    model = make_tiny_model("llama").to(dtype)
    inputs = batch()
    recorder = EmbeddingRecorder(model)
    model.train()
    with attach(model, NoiseConfig("uniform", ALPHA, seed=0)):
        loss = model(**inputs).loss
    assert torch.isfinite(loss)
    noisy = recorder.outputs[-1]
    assert noisy.dtype == dtype
    sq = (noisy.float() - recorder.clean(model, inputs).float()).square().sum(dim=(-1, -2))
    assert sq.mean().item() == pytest.approx(ALPHA**2 / 3, rel=0.15)  # 3 examples, coarse dtype


class FlatEmbeddingWrapper(torch.nn.Module):
    """Like multimodal wrappers: calls the embedding on 1-D ids, so the embedding output is 2-D."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, labels=None):
        flat = self.get_input_embeddings()(input_ids.flatten())
        return self.lm(
            inputs_embeds=flat.view(*input_ids.shape, -1), attention_mask=attention_mask, labels=labels
        )


def test_two_dimensional_embedding_outputs(llama):
    wrapper = FlatEmbeddingWrapper(llama)
    inputs = batch()
    recorder = EmbeddingRecorder(llama)
    wrapper.train()
    with attach(wrapper, NoiseConfig("bernoulli", ALPHA)):
        wrapper(**inputs)
    noise = recorder.outputs[-1].view(3, 10, -1) - recorder.clean(llama, inputs)
    assert noise.square().sum(dim=(-1, -2)).sqrt().tolist() == pytest.approx([ALPHA / SQRT3] * 3, rel=1e-5)
    assert torch.all(noise[inputs["attention_mask"] == 0] == 0)


def test_embedding_output_of_unknown_shape_fails_clearly(llama):
    class Odd(FlatEmbeddingWrapper):
        def forward(self, input_ids, attention_mask=None, labels=None):
            return self.get_input_embeddings()(input_ids[:, :2])

    wrapper = Odd(llama).train()
    with attach(wrapper, NoiseConfig("uniform", ALPHA)):
        with pytest.raises(ValueError, match="cannot tell which embedding"):
            wrapper(**batch())
