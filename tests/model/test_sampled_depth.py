"""Training at random depth, the model's side (issue 15): one call at r iterations
(``loop_iterations=``) with gradients through the last b only (``backprop_iterations=``), checked
against test_looped's independent unrolled forward with the first r − b iterations under no_grad.

Geometry of test_looped: p = 1, k = 2 (layers 1, 2), c = 1; at r = 3 the applications e = 0 .. 7
run layers 0, 1, 2, 1, 2, 1, 2, 3 and iteration t is e = 1 + 2t, 2 + 2t.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from depthattn import CausalLM, KVCache
from tests.conftest import random_ids, randomize_, tiny_config
from tests.model.test_looped import LOOP, ORDER, SOURCES, looped_model, unrolled_logits


def iteration_applications(t: int) -> set[int]:
    """The applications of iteration t at r = 3 (p = 1, k = 2)."""
    return {1 + 2 * t, 2 + 2 * t}


def gradients(model: CausalLM, logits: torch.Tensor, targets: torch.Tensor
              ) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_same_gradients(actual, expected, exact: bool = False) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        if grad is None:
            assert actual[name] is None, name
        elif exact:
            assert torch.equal(actual[name], grad), name
        else:
            torch.testing.assert_close(actual[name], grad, rtol=1e-10, atol=1e-12, msg=name)


# --- gradients through the last b iterations ----------------------------------------------------
@pytest.mark.parametrize("configured", [2, 3])  # a call at r = 3, at or beside the config's r
@pytest.mark.parametrize("backprop", [1, 2])
@pytest.mark.parametrize("injection", ["add", "concat"])
@pytest.mark.parametrize("rule", ["applications", "recurrent", None])
def test_truncated_backprop_equals_the_unrolled_reference(rule, injection, backprop, configured):
    """The first 3 − b iterations as constants: their state and their depth-stash entries take no
    gradient, while the prelude's output still reaches the last b through the injection."""
    method = {} if rule is None else {"method": "depth_attention",
                                      "method_options": {"stride": 4, "sources": rule}}
    model = looped_model(loop_iterations=configured, loop_injection=injection, **method).train()
    ids, targets = random_ids(2, 9), random_ids(2, 9, seed=1)
    logits = model(ids, loop_iterations=3, backprop_iterations=backprop)
    actual = gradients(model, logits, targets)
    frozen = frozenset().union(*(iteration_applications(t) for t in range(3 - backprop)))
    sources = None if rule is None else SOURCES[rule]
    reference = unrolled_logits(model, ids, ORDER, sources, injection, no_grad=frozen)
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-10)
    assert_same_gradients(actual, gradients(model, reference, targets))
    # and truncation changed something: the full gradient differs
    full = gradients(model, unrolled_logits(model, ids, ORDER, sources, injection), targets)
    name = "model.layers.1.self_attn.q_proj.weight"  # the looped block's first layer
    assert not torch.allclose(actual[name], full[name])


@pytest.mark.parametrize("method", ["vanilla", "depth_attention", "value_residual"])
@pytest.mark.parametrize("backprop", [None, 3, 7])
def test_backprop_through_every_iteration_is_the_plain_gradient(method, backprop):
    """b >= r (or None): bit for bit the plain forward's gradient, loss and logits."""
    model = looped_model(method=method, loop_injection="concat").train()
    ids, targets = random_ids(2, 9), random_ids(2, 9, seed=1)
    plain = gradients(model, model(ids), targets)
    assert_same_gradients(gradients(model, model(ids, backprop_iterations=backprop), targets),
                          plain, exact=True)
    called = model(ids, loop_iterations=3, backprop_iterations=backprop)
    assert_same_gradients(gradients(model, called, targets), plain, exact=True)
    assert torch.equal(model.loss(ids, targets, backprop_iterations=backprop),
                       model.loss(ids, targets))


@pytest.mark.parametrize("injection", ["none", "add"])
def test_the_prelude_learns_through_the_injection_only(injection):
    """Vanilla at b = 1: the state entering the last iteration is a constant, so with injection
    'none' the prelude gets no gradient (TrainConfig refuses that), with 'add' it does."""
    model = looped_model(loop_injection=injection).train()
    ids, targets = random_ids(2, 9), random_ids(2, 9, seed=1)
    grads = gradients(model, model(ids, backprop_iterations=1), targets)
    prelude = grads["model.layers.0.mlp.down_proj.weight"]
    assert (prelude is None) == (injection == "none")
    assert grads["model.layers.1.mlp.down_proj.weight"] is not None  # the shared weights learn


def test_activation_checkpointing_with_truncated_backprop():
    ids, targets = random_ids(2, 7), random_ids(2, 7, seed=1)
    grads = []
    for checkpointing in (False, True):
        model = looped_model(method="depth_attention", loop_injection="concat").train()
        model.model.activation_checkpointing = checkpointing
        model.loss(ids, targets, loop_iterations=4, backprop_iterations=2).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert_same_gradients(grads[1], grads[0])


# --- a call at another depth leaves the model as it was ----------------------------------------
METHODS = [("vanilla", {}), ("depth_attention", {}), ("depth_attention", {"sources": "recurrent"}),
           ("value_residual", {"mode": "learned"}), ("value_residual", {"mode": "gated"})]


@pytest.mark.parametrize("method,options", METHODS)
def test_a_call_at_r_equals_set_loop_iterations_and_changes_nothing(method, options):
    model = looped_model(loop_iterations=2, method=method, method_options=options,
                         loop_injection="add")
    config, apps, cross_layer = model.config, model.model.applications, model.model.cross_layer
    ids = random_ids(2, 9)
    with torch.no_grad():
        before = model(ids)
        at_depth = copy.deepcopy(model)
        at_depth.set_loop_iterations(4)
        torch.testing.assert_close(model(ids, loop_iterations=4), at_depth(ids), rtol=0, atol=0)
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
    assert model.config is config and model.model.config.loop_iterations == 2
    assert model.model.applications is apps and model.model.cross_layer is cross_layer
    # the model's own method runs every depth: its parameters get the gradient
    model.train().loss(ids, random_ids(2, 9, seed=1), loop_iterations=4).backward()
    for name, param in model.model.cross_layer.named_parameters():
        assert param.grad is not None, name


def test_a_kept_plan_follows_to_and_load_state_dict():
    model = looped_model(loop_iterations=2, method="value_residual",
                         method_options={"mode": "gated"}, loop_injection="add")
    ids = random_ids(2, 9)
    with torch.no_grad():
        model(ids, loop_iterations=4)  # the plan for r = 4 is built and kept
        other = CausalLM(model.config)
        randomize_(other, seed=7)
        model.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects
        model.float()
        expected = copy.deepcopy(model)
        expected.set_loop_iterations(4)
        torch.testing.assert_close(model(ids, loop_iterations=4), expected(ids), rtol=0, atol=0)


# --- bad input -----------------------------------------------------------------------------------
def test_bad_depth_arguments_raise_before_work():
    model = looped_model()
    plain = CausalLM(tiny_config(num_layers=4)).double()
    ids = random_ids(1, 5)
    cases = [
        (lambda: model(ids, loop_iterations=0), r"loop_iterations \(0\) must be an integer >= 1"),
        (lambda: model(ids, loop_iterations=2.0), r"loop_iterations \(2.0\) must be an integer"),
        (lambda: model(ids, backprop_iterations=0), r"backprop_iterations \(0\) must be an int"),
        (lambda: plain(ids, backprop_iterations=1), "not looped"),
        (lambda: plain(ids, loop_iterations=2), "needs a looped block"),
        (lambda: model(ids, cache=KVCache.for_model(model, 1, 8), loop_iterations=2),
         r"set_loop_iterations\(2\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert model.config.loop_iterations == 3
    assert len(model.model.applications) == model.config.num_applications


# --- torch.compile ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_loss_at_sampled_depths_matches_eager():
    """One graph per distinct (r, b)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = CausalLM(tiny_config(**LOOP, loop_injection="concat")).train()
    compiled = torch.compile(model.loss, backend="aot_eager")
    ids, targets = random_ids(2, 9), random_ids(2, 9, seed=1)
    for r, b in [(2, 1), (4, 2), (2, 1), (5, 2)]:
        results = []
        for loss in (compiled, model.loss):
            model.zero_grad(set_to_none=True)
            value = loss(ids, targets, loop_iterations=r, backprop_iterations=b)
            value.backward()
            results.append((value.detach(), {n: p.grad for n, p in model.named_parameters()}))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
        assert_same_gradients_close(results[0][1], results[1][1])
    assert counters["stats"]["unique_graphs"] == 3
    assert not counters["graph_break"]


def assert_same_gradients_close(actual, expected) -> None:
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-6, msg=name)
