"""torch.compile with noise attached: the same numbers as eager, and graph breaks only where the README says.

The noise draw uses an explicit ``torch.Generator`` (exact resume, per-rank streams), which dynamo cannot trace, so
it runs outside the graph (``torch.compiler.disable``). Whole-model compile therefore splits at the draw; compiling
the decoder layers one by one (the embedding stays eager) has no break at all. Compiled with ``aot_eager`` so the
test runs in seconds on a CPU while still tracing forward and backward through dynamo and AOTAutograd.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import symnoise

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

dynamo = pytest.importorskip("torch._dynamo")


def batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 400, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def loss_and_grads(model, forward, config: symnoise.NoiseConfig):
    model.zero_grad(set_to_none=True)
    with symnoise.attach(model, config):
        loss = forward(**batch()).loss
        loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same(reference, other):
    loss, grads = reference
    assert torch.allclose(other[0], loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(other[1][name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("method", ["uniform", "symnoise"])
def test_whole_model_compile_matches_eager_and_breaks_only_at_the_draw(method):
    config = symnoise.NoiseConfig(method, alpha=5, seed=3)
    model = make_tiny_model("llama").train()
    eager = loss_and_grads(model, model, config)
    dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    assert_same(eager, loss_and_grads(model, compiled, config))

    with symnoise.attach(model, config):
        explained = dynamo.explain(model)(**batch())
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert reasons, "expected the noise draw to split the graph"
    assert all("sample_unit_noise" in reason for reason in reasons), reasons


@pytest.mark.parametrize("method", ["uniform", "symnoise"])
def test_per_layer_compile_has_no_graph_break(method):
    from torch._dynamo.utils import counters

    config = symnoise.NoiseConfig(method, alpha=5, seed=3)
    model = make_tiny_model("llama").train()
    eager = loss_and_grads(model, model, config)
    dynamo.reset()
    counters.clear()
    for layer in model.model.layers:
        layer.compile(backend="aot_eager", fullgraph=True)
    assert_same(eager, loss_and_grads(model, model, config))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1  # the layers really went through dynamo
