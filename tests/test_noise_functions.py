"""The pure noise functions: magnitudes against the reference table, support, padding, packing, schedules."""

import math

import pytest
import torch

from symnoise import NoiseConfig
from symnoise import noise as N

ALPHA = 5.0
SQRT3 = math.sqrt(3.0)


def draw(distribution, lengths_per_row, seq, dim, draws, match=True, position_ids=None, generator_seed=0):
    """Draw `draws` independent noise tensors for a batch whose rows have the given real lengths."""
    mask = torch.arange(seq).unsqueeze(0) < torch.tensor(lengths_per_row).unsqueeze(1)
    lengths = N.token_lengths(mask, position_ids)
    scale = N.noise_scale(lengths, dim, ALPHA, N.distribution_factor(distribution, match))
    g = torch.Generator().manual_seed(generator_seed)
    eps = N.sample_unit_noise((draws, len(lengths_per_row), seq, dim), distribution, generator=g)
    return eps * scale, mask


@pytest.mark.parametrize(
    "distribution,match,expected_sq",
    [
        ("uniform", True, ALPHA**2 / 3),
        ("gaussian", True, ALPHA**2 / 3),
        ("gaussian", False, ALPHA**2),
        ("bernoulli", True, ALPHA**2 / 3),
    ],
)
def test_mean_squared_norm_per_example_matches_reference_table(distribution, match, expected_sq):
    # Rows of very different real lengths: with per-example L every row has the same expected norm.
    lengths = [1, 3, 8, 20, 47, 64]
    noise, mask = draw(distribution, lengths, seq=64, dim=32, draws=400, match=match)
    sq_norm = noise.square().sum(dim=(-1, -2))  # (draws, rows)
    per_row = sq_norm.mean(dim=0)
    assert N.expected_squared_norm(ALPHA, distribution, match) == pytest.approx(expected_sq)
    # Standard error of the mean of ||n||^2 over 400 draws is at most sqrt(2/(L d))/20 relative (1.25% for the
    # 1-token row, Gaussian); 6% is about 5 standard errors there and far more for the longer rows.
    assert per_row.tolist() == pytest.approx([expected_sq] * len(lengths), rel=0.06)
    # Padding gets exactly zero noise.
    assert torch.all(noise[:, ~mask] == 0)


def test_bernoulli_norm_is_exact_for_every_example():
    noise, _ = draw("bernoulli", [2, 5, 9], seq=12, dim=16, draws=3)
    sq = noise.square().sum(dim=(-1, -2))
    assert torch.allclose(sq, torch.full_like(sq, ALPHA**2 / 3), rtol=1e-6)


def test_uniform_is_zero_mean_on_symmetric_support():
    # Catches torch.rand_like (U[0, 1), mean 1/2) mistaken for U(-1, 1).
    g = torch.Generator().manual_seed(1)
    u = N.sample_unit_noise((200_000,), "uniform", generator=g)
    assert u.min() >= -1 and u.max() <= 1
    assert u.min() < -0.999 and u.max() > 0.999
    assert abs(u.mean().item()) < 5 * math.sqrt(1 / 3 / u.numel())  # 5 standard errors
    assert u.square().mean().item() == pytest.approx(1 / 3, rel=0.01)


def test_gaussian_and_bernoulli_support_and_moments():
    g = torch.Generator().manual_seed(2)
    z = N.sample_unit_noise((200_000,), "gaussian", generator=g)
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert z.var().item() == pytest.approx(1.0, rel=0.02)
    b = N.sample_unit_noise((200_000,), "bernoulli", generator=g)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    assert abs(b.mean().item()) < 5 / math.sqrt(b.numel())


def test_noise_is_drawn_in_the_requested_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for distribution in N.DISTRIBUTIONS:
            assert N.sample_unit_noise((4, 4), distribution, dtype=dtype).dtype == dtype
    with pytest.raises(ValueError, match="unknown noise distribution"):
        N.sample_unit_noise((2,), "laplace")


def test_packed_row_gets_the_per_sequence_scale_of_the_padded_batch():
    lengths = [3, 5, 2]
    padded_mask = torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    padded = N.token_lengths(padded_mask)
    packed_positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = N.token_lengths(torch.ones(1, sum(lengths), dtype=torch.bool), packed_positions)
    assert packed.squeeze(0).tolist() == padded[padded_mask].tolist() == [3.0] * 3 + [5.0] * 5 + [2.0] * 2
    assert torch.equal(
        N.noise_scale(packed, 64, ALPHA).flatten(), N.noise_scale(padded, 64, ALPHA)[padded_mask].flatten()
    )


def test_position_ids_from_cu_seqlens():
    cu = torch.tensor([0, 3, 8, 10])
    assert N.position_ids_from_cu_seqlens(cu, 10).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]


def test_left_padding_position_ids_do_not_split_the_real_sequence():
    # transformers fills the position ids of left padding with 1.
    mask = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.bool)
    positions = torch.tensor([[1, 1, 0, 1, 2]])
    assert N.token_lengths(mask, positions).tolist() == [[0, 0, 3, 3, 3]]


def test_sequence_norms_of_packed_rows():
    lengths = [4, 7]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    tl = N.token_lengths(torch.ones(1, 11, dtype=torch.bool), positions)
    eps = N.sample_unit_noise((1, 11, 8), "bernoulli", generator=torch.Generator().manual_seed(0))
    noise = eps * N.noise_scale(tl, 8, ALPHA, 1 / SQRT3)
    norms, valid = N.sequence_noise_norms(noise, tl, positions)
    assert norms[valid].tolist() == pytest.approx([ALPHA / SQRT3] * 2, rel=1e-6)
    assert N.mean_noise_norm(noise, tl, positions).item() == pytest.approx(ALPHA / SQRT3, rel=1e-6)


@pytest.mark.parametrize(
    "schedule,progress,expected",
    [
        ("constant", 0.7, 5.0),
        ("linear", 0.0, 5.0),
        ("linear", 0.5, 3.0),
        ("linear", 1.0, 1.0),
        ("cosine", 0.0, 5.0),
        ("cosine", 0.5, 3.0),
        ("cosine", 1.0, 1.0),
        ("linear", 2.0, 1.0),
    ],
)
def test_schedules(schedule, progress, expected):
    assert N.scheduled_alpha(5.0, 1.0, schedule, progress) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(method="laplace"), ValueError, "NoiseConfig.method"),
        (dict(method=3), TypeError, "NoiseConfig.method"),
        (dict(alpha=-1), ValueError, "NoiseConfig.alpha"),
        (dict(alpha=float("nan")), ValueError, "NoiseConfig.alpha"),
        (dict(alpha=float("inf")), ValueError, "NoiseConfig.alpha"),
        (dict(alpha="5"), TypeError, "NoiseConfig.alpha"),
        (dict(alpha=2, alpha_floor=3, schedule="linear"), ValueError, "alpha_floor"),
        (dict(schedule="step"), ValueError, "NoiseConfig.schedule"),
        (dict(length_mode="batch"), ValueError, "NoiseConfig.length_mode"),
        (dict(region="input"), ValueError, "NoiseConfig.region"),
        (dict(execution="split"), ValueError, "NoiseConfig.execution"),
        (dict(method="none", symmetric=True), ValueError, "symmetric"),
        (dict(seed=1.5), TypeError, "NoiseConfig.seed"),
        (dict(length_mode="padded", region="response"), ValueError, "padded"),
    ],
)
def test_bad_config_names_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        NoiseConfig(**kwargs)


def test_config_defaults_and_aliases():
    assert NoiseConfig("neftune").method == "uniform"
    assert NoiseConfig("symnoise").symmetric and NoiseConfig("symnoise").distribution == "bernoulli"
    assert not NoiseConfig("bernoulli").symmetric
    assert NoiseConfig("gaussian", symmetric=True).symmetric
    assert not NoiseConfig("none").is_active and not NoiseConfig("uniform", alpha=0).is_active
    cfg = NoiseConfig("gaussian", 10, match_uniform_norm=False, seed=3)
    assert NoiseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown NoiseConfig field"):
        NoiseConfig.from_dict({"method": "uniform", "alhpa": 5})
