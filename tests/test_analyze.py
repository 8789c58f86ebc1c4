"""`symnoise analyze`: the estimators on exact cases (a quadratic loss, a Hessian small enough to form), the
antithetic variance reduction on a tiny LM, and the command on a real run directory from the outside."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_model
from test_train import tiny_config

from symnoise import noise as N
from symnoise.analysis.analyze import Settings, direction_sampler, run_analysis
from symnoise.analysis.estimators import (
    gradient_study,
    hutchinson_trace,
    pair_gradient,
    symmetric_terms,
)
from symnoise.analysis.inputs import DataSources
from symnoise.analysis.lm import EmbeddingLoss, make_batches
from symnoise.cli.main import main
from symnoise.config import NoiseConfig
from symnoise.train import train

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadratic(dim: int = 6, seed: int = 0):
    """L(x) = 1/2 x'Ax + b'x with a symmetric, indefinite A, in float64."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = (m + m.T) / 2
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    x = torch.randn(dim, generator=g, dtype=torch.float64)
    return a, b, x, g


# ------------------------------------------------------------------------------------------ exact identities


def test_symmetric_pair_cancels_the_first_order_term_exactly_on_a_quadratic():
    a, b, x, g = quadratic()
    loss = lambda z: 0.5 * z @ a @ z + b @ z  # noqa: E731
    gradient = lambda z: a @ z + b  # noqa: E731
    for _ in range(5):
        e = torch.randn(x.shape, generator=g, dtype=torch.float64)
        asymmetry, curvature = symmetric_terms(loss, x, e)
        # L(x+e) - L(x-e) = 2 (Ax + b).e exactly; L(x+e) + L(x-e) - 2 L(x) = e'Ae exactly.
        assert abs(float(asymmetry) - abs(float(gradient(x) @ e))) < 1e-10
        assert abs(float(curvature) - float(e @ a @ e)) < 1e-10
        # The pair's gradient is the clean gradient: the A e terms of the two halves cancel.
        assert torch.allclose(pair_gradient(gradient, x, e), gradient(x), rtol=0, atol=1e-12)


def test_gradient_study_on_a_quadratic_pair_variance_is_zero_one_draw_matches_theory():
    """g(x + s e) = Ax + b + s A e: with Rademacher e the one-draw variance is s^2 tr(A^2), two draws average
    it to half, and the pair's estimate is exactly the clean gradient (variance and distance 0)."""
    a, b, x, _ = quadratic(dim=8, seed=1)
    s = 0.3
    rng = torch.Generator().manual_seed(2)
    sample = lambda: (torch.randint(0, 2, x.shape, generator=rng) * 2 - 1).to(torch.float64) * s  # noqa: E731
    gradient_at = lambda e, sign: a @ (x if e is None else x + sign * e) + b  # noqa: E731
    study = gradient_study(gradient_at, sample, draws=400, seed=0)
    expected = s**2 * float(torch.trace(a @ a))
    one, two, pair = (study.variance[k] for k in ("one_draw", "two_draws", "pair"))
    assert abs(one["mean"] - expected) < 4 * one["se"], (one, expected)
    assert abs(two["mean"] - expected / 2) < 4 * two["se"], (two, expected / 2)
    assert one["ci"][0] < expected < one["ci"][1]
    assert pair["mean"] < 1e-20 and study.squared_bias["pair"]["mean"] < 1e-20
    assert abs(study.squared_bias["one_draw"]["mean"]) < 4 * study.squared_bias["one_draw"]["se"]
    assert study.antithetic_ratio["estimate"] < 1e-15


def test_hutchinson_matches_the_exact_hessian_trace_of_a_tiny_llama():
    """Hessian of the loss w.r.t. the input embeddings of a 1-layer Llama (6 tokens x 8 dims), formed exactly with
    torch.autograd.functional.hessian, against 2000 Rademacher probes: within 4 standard errors."""
    model = make_tiny_model("llama", vocab_size=64, hidden=8, num_hidden_layers=1, initializer_range=0.5)
    model = model.double()
    ids = [5, 17, 33, 2, 40, 9]
    batches = make_batches([{"input_ids": ids, "labels": ids}], 1, 0, NoiseConfig(), "cpu")
    loss = EmbeddingLoss(model, batches)
    batch = batches[0]
    x0 = model.get_input_embeddings()(batch.input_ids).detach()

    def flat_loss(flat):
        return loss._token_losses(batch, flat.view_as(x0)).sum() / loss.tokens

    exact = float(torch.trace(torch.autograd.functional.hessian(flat_loss, x0.reshape(-1))))
    result = hutchinson_trace(lambda p: loss.hessian_form(1000 + p), probes=2000, seed=0)
    assert abs(exact) > 0.05  # a Hessian with something to estimate (observed about 1.3)
    assert result["se"] > 0 and abs(result["estimate"] - exact) < 4 * result["se"], (result, exact)
    assert result["ci"][0] < result["estimate"] < result["ci"][1]


def test_analysis_noise_is_the_runs_noise_on_real_tokens_only():
    """SymNoise's noise is +-alpha / sqrt(3 L d) per element, so each sequence's noise has norm alpha / sqrt(3)
    exactly, whatever its length; padding gets none; the same draw regenerates the same noise (for -e)."""
    model = make_tiny_model("llama", vocab_size=64, hidden=32)
    items = [{"input_ids": [5] * n, "labels": [5] * n} for n in (3, 7, 11)]
    batches = make_batches(items, 2, 0, NoiseConfig(method="symnoise", alpha=5.0), "cpu")
    loss = EmbeddingLoss(model, batches)
    direction = direction_sampler("bernoulli", 5.0, N.distribution_factor("bernoulli", True), 0)()
    noises = loss._noise(direction)
    for batch, noise in zip(batches, noises, strict=True):
        norms = noise.square().sum(dim=(1, 2)).sqrt()
        assert torch.allclose(norms, torch.full_like(norms, 5.0 / math.sqrt(3)), rtol=1e-5)
        assert (noise[~batch.attention_mask.bool()] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(noises, loss._noise(direction), strict=True))


# ------------------------------------------------------------------------------------------ tiny LM statistics


@pytest.fixture(scope="module")
def tiny_lm_study():
    """64 draws of SymNoise's noise (Rademacher / sqrt 3) at alpha 15 on a tiny random Llama: 8 sequences of 24
    tokens, loss on the last 16. Initialised at std 0.1 so that the embeddings and the noise are of similar size."""
    torch.set_num_threads(1)
    model = make_tiny_model("llama", vocab_size=64, hidden=32, initializer_range=0.1)
    g = torch.Generator().manual_seed(1)
    items = []
    for _ in range(8):
        ids = torch.randint(3, 64, (24,), generator=g).tolist()
        items.append({"input_ids": ids, "labels": [-100] * 8 + ids[8:]})
    config = NoiseConfig(method="symnoise", alpha=15.0)
    loss = EmbeddingLoss(model, make_batches(items, 4, 0, config, "cpu"))
    factor = N.distribution_factor("bernoulli", True)
    return gradient_study(loss.gradient_at, direction_sampler("bernoulli", 15.0, factor, 3), 64, seed=0)


def test_pair_gradient_variance_is_below_two_independent_draws(tiny_lm_study):
    study = tiny_lm_study
    ratio = study.antithetic_ratio
    # Observed: antithetic ratio 0.71 [0.70, 0.72] (32 pairs of draws); two draws / one draw 0.50.
    assert ratio["estimate"] < 0.9 and ratio["ci"][1] < 0.9, ratio
    halving = study.variance["two_draws"]["mean"] / study.variance["one_draw"]["mean"]
    assert 0.4 < halving < 0.6, halving  # independent draws halve the variance: the estimator is calibrated


def test_one_sided_and_pair_gradients_share_their_expectation(tiny_lm_study):
    """mean(one draw) - mean(pair) = mean of (g(x+e) - g(x-e)) / 2 over draws, which has expectation 0 and, since
    Cov((a-b)/2) + Cov((a+b)/2) = Cov(a), squared size (var(one) - var(pair)) / K on average."""
    study = tiny_lm_study
    distance = float(torch.linalg.vector_norm(study.means["one_draw"] - study.means["pair"]))
    expected_square = (study.variance["one_draw"]["mean"] - study.variance["pair"]["mean"]) / study.draws
    # Observed: distance^2 about 1.0x its expectation; a systematic difference would grow it without bound.
    assert distance**2 < 3 * expected_square, (distance**2, expected_square)
    spread = math.sqrt(study.variance["one_draw"]["mean"])
    assert distance < 0.35 * spread, (distance, spread)


# ------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def trained_run(base_model, alpaca_file, tmp_path_factory):
    """A 2-step SymNoise run on the tiny Llama (checkpoint-2 and the final model)."""
    out = tmp_path_factory.mktemp("analyze") / "symnoise-run"
    train(tiny_config(base_model, alpaca_file, out, training__max_steps=2))
    return out


def analyze_command(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "symnoise", "analyze", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_end_to_end(trained_run, alpaca_file, tmp_path):
    out = tmp_path / "analysis"
    sizes = ["--examples", 4, "--draws", 4, "--probes", 4, "--alphas", "5,15", "--batch-size", 2]
    proc = analyze_command(trained_run, "--data", alpaca_file, "--out", out, "--checkpoints", *sizes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)  # the figures of this run, for the record
    analysis = json.loads((out / "analysis.json").read_text())
    runs = analysis["runs"]
    assert [run["label"] for run in runs] == [f"{trained_run.name}/checkpoint-2", trained_run.name]
    for run in runs:
        assert run["method"] == "symnoise" and run["alpha"] == 5.0 and run["distribution"] == "bernoulli"
        assert math.isfinite(run["antithetic_ratio"]) and 0 < run["antithetic_ratio"] < 2
        assert run["antithetic_ratio_ci"][0] <= run["antithetic_ratio"] <= run["antithetic_ratio_ci"][1]
        assert set(run["losses"]) == {"train", "heldout", "gap"}
        for split in ("train", "heldout"):
            result = run["splits"][split]
            assert result["examples"] == 4
            gradients = result["gradients"]
            assert set(gradients["variance"]) == {"one_draw", "two_draws", "pair"}
            assert all(v["variance"] > 0 for v in gradients["variance"].values())
            assert set(gradients["mean_gradient_distance"]) == {"one_draw", "two_draws", "pair"}
            assert set(result["directions"]) == {"bernoulli", "gaussian", "uniform"}
            assert set(result["directions"]["gaussian"]) == {"5", "15"}
            for measured in result["directions"]["uniform"].values():
                assert measured["asymmetry"]["mean"] >= 0 and len(measured["curvature"]["ci"]) == 2
            assert result["hessian_trace"]["probes"] == 4 and math.isfinite(
                result["hessian_trace"]["estimate"]
            )
    # checkpoint-2 holds the final weights, and every run gets the same draws: the same numbers, repeated
    assert runs[0]["splits"] == runs[1]["splits"]
    markdown = (out / "analysis.md").read_text()
    assert "antithetic ratio" in markdown and "Hutchinson" in markdown and trained_run.name in markdown
    assert markdown in proc.stdout
    for plot in ("gradient_variance.png", "directions.png", "losses.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lora_run_is_analysed_on_its_adapters(base_model, alpaca_file, tmp_path):
    """A LoRA run's gradients are those of its adapters only, as in training: rank 8 on q_proj (32 -> 32) and
    v_proj (32 -> 16, two key-value heads of 8) in each of 2 layers: 2 * (8 * 32 + 32 * 8 + 8 * 32 + 16 * 8) = 1792."""
    run = tmp_path / "lora-run"
    lora = dict(
        lora__enabled=True, lora__r=8, lora__target_modules=["q_proj", "v_proj"], training__max_steps=1
    )
    train(tiny_config(base_model, alpaca_file, run, noise__method="uniform", **lora))
    sources = DataSources(alpaca_file, None, 2)
    analysis = run_analysis([run], sources, Settings(examples=2, draws=4, probes=2, alphas=(5.0,)), log=print)
    (result,) = analysis["runs"]
    assert result["lora"] and result["trainable_parameters"] == 1792
    assert result["distribution"] == "uniform" and not result["symmetric"]
    assert 0 < result["antithetic_ratio"] < 2


def test_cli_refuses_missing_model_or_data_before_loading(trained_run, alpaca_file, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained_run / "symnoise_run.json", unfinished / "symnoise_run.json")
    out = tmp_path / "out"
    proc = analyze_command(unfinished, "--data", alpaca_file, "--out", out)
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr and str(unfinished) in proc.stderr
    missing = tmp_path / "nowhere.json"
    proc = analyze_command(trained_run, "--data", missing, "--out", out)
    assert proc.returncode == 2 and f"--data {missing}: no such file" in proc.stderr, proc.stderr
    assert not out.exists()
    (tmp_path / "not-a-run").mkdir()
    assert main(["analyze", str(tmp_path / "not-a-run"), "--data", str(alpaca_file), "--out", str(out)]) == 2
    assert "symnoise_run.json: missing" in capsys.readouterr().err
    assert main(["analyze", str(trained_run), "--data", str(alpaca_file), "--draws", "5"]) == 2
    assert "even number" in capsys.readouterr().err and not (trained_run / "analysis").exists()
