"""The whole Depth-Attention forward against an independent float64 re-implementation.

``tests.model.reference_model.reference_forward`` is written from docs/method.md (§1–§3) and
reads only the model's config and state dict; the model runs in float64 (``model.double()``) so
the two must agree to ~1e-10, far below any real mistake (a wrong source set, a swapped norm, a missing
recursion all move the logits by > 1e-3 with these random weights).
"""

from __future__ import annotations

import pytest
import torch

from depthattn import capture_depth_weights
from tests.model.reference_model import (
    closest_precision,
    closest_reference,
    reference_forward,
    sources_of,
)

ATOL = 1e-10

CASES = [
    # method, method_options, k_norm_position, num_kv_heads (H = 4)
    pytest.param("vanilla", {}, "before_rope", 2, id="vanilla-G2"),
    pytest.param("vanilla", {}, "after_rope", 2, id="vanilla-after_rope-G2"),
    pytest.param("depth_attention", {}, "before_rope", 2, id="default-stride-G2"),
    pytest.param("depth_attention", {"stride": 1}, "before_rope", 4, id="s1-G1"),
    pytest.param("depth_attention", {"stride": 1}, "before_rope", 2, id="s1-G2"),
    pytest.param("depth_attention", {"stride": 2, "recent_window": 1}, "before_rope", 1,
                 id="s2w1-G4"),
    pytest.param("depth_attention", {"stride": 6}, "before_rope", 2, id="s=L-G2"),
    pytest.param("depth_attention", {"stride": 4, "recent_window": 2}, "before_rope", 2,
                 id="s4w2-G2"),
    pytest.param("depth_attention", {"stride": 1}, "after_rope", 2, id="s1-after_rope-G2"),
    pytest.param("depth_attention", {"stride": 2, "recent_window": 2}, "after_rope", 1,
                 id="s2w2-after_rope-G4"),
]


def build(make_model, method, options, k_norm_position="before_rope", num_kv_heads=2, seed=0,
          **overrides):
    return make_model(seed=seed, dtype=torch.float64, method=method, method_options=options,
                      k_norm_position=k_norm_position, num_kv_heads=num_kv_heads, **overrides)


@pytest.mark.parametrize("method, options, k_norm_position, num_kv_heads", CASES)
def test_logits_match_float64_reference(make_model, make_ids, method, options, k_norm_position,
                                        num_kv_heads):
    model = build(make_model, method, options, k_norm_position, num_kv_heads)
    ids = make_ids(2, 9, seed=1)
    with torch.no_grad():
        logits = model(ids)
    assert logits.dtype == torch.float64 and logits.shape == (2, 9, 128)
    ref = closest_reference(model.config, model.state_dict(), ids, logits)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=ATOL)


def test_reference_is_sensitive(make_model, make_ids):
    """Guard for the test above: plausible mistakes move the reference far beyond ATOL."""
    model = build(make_model, "depth_attention", {"stride": 2, "recent_window": 1})
    ids = make_ids(2, 9, seed=1)
    cfg, params = model.config, model.state_dict()
    base = reference_forward(cfg, params, ids).logits
    variants = {
        "stride 1": cfg.with_method("depth_attention", stride=1, recent_window=1),
        "window 0": cfg.with_method("depth_attention", stride=2, recent_window=0),
        "vanilla": cfg.with_method("vanilla"),
    }
    for name, other in variants.items():
        diff = (reference_forward(other, params, ids).logits - base).abs().max()
        assert diff > 1e-3, name
    # RoPE precision (float32 as Qwen3 vs float64) is far below the method's effects
    hi = reference_forward(cfg, params, ids, angle_dtype=torch.float64).logits
    assert (hi - base).abs().max() < 1e-5


def test_depth_attention_differs_from_vanilla_on_the_same_weights(make_model, make_ids):
    depth = build(make_model, "depth_attention", {"stride": 1})
    vanilla = build(make_model, "vanilla", {})
    vanilla.load_state_dict(depth.state_dict(), strict=True)
    ids = make_ids(2, 9, seed=2)
    with torch.no_grad():
        diff = (depth(ids) - vanilla(ids)).abs().max()
    assert diff > 1e-3


def test_after_rope_changes_depth_attention(make_model, make_ids):
    before = build(make_model, "depth_attention", {"stride": 1}, "before_rope")
    after = build(make_model, "depth_attention", {"stride": 1}, "after_rope")
    after.load_state_dict(before.state_dict(), strict=True)
    ids = make_ids(1, 9, seed=3)
    with torch.no_grad():
        assert (before(ids) - after(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("k_norm_position", ["before_rope", "after_rope"])
@pytest.mark.parametrize("options", [{"stride": 1}, {"stride": 2, "recent_window": 1}, {}])
def test_captured_depth_weights_match_reference(make_model, make_ids, options, k_norm_position):
    model = build(make_model, "depth_attention", options, k_norm_position)
    ids = make_ids(2, 7, seed=4)
    with torch.no_grad():
        plain = model(ids)
        with capture_depth_weights(model) as rec:
            captured = model(ids)
    # capturing must not change the forward
    torch.testing.assert_close(captured, plain, rtol=0, atol=ATOL)
    ref = closest_reference(model.config, model.state_dict(), ids, plain)

    stride = model.config.method_options["stride"]
    window = model.config.method_options["recent_window"]
    # layer 0 has no sources: nothing recorded, or a trivial weight of 1 on itself
    assert list(rec.sources.get(0, [])) == []
    if 0 in rec.weights:
        assert rec.weights[0].shape[-1] == 1
        assert torch.all(rec.weights[0] == 1)
    for layer in range(1, model.config.num_layers):
        expected_sources = sources_of(layer, stride, window)
        assert list(rec.sources[layer]) == expected_sources, layer
        alpha = rec.weights[layer]
        assert alpha.shape == (2, 2, 7, len(expected_sources) + 1), layer
        torch.testing.assert_close(alpha.double().sum(-1), torch.ones(2, 2, 7, dtype=torch.float64),
                                   rtol=0, atol=1e-6)
        # the capture may store α in float32
        torch.testing.assert_close(alpha.double(), ref.alphas[layer], rtol=0, atol=1e-6)


def test_stride_equal_to_num_layers_reads_only_layer_zero(make_model, make_ids):
    model = build(make_model, "depth_attention", {"stride": 6})
    ids = make_ids(1, 5, seed=5)
    with torch.no_grad(), capture_depth_weights(model) as rec:
        model(ids)
    assert list(rec.sources.get(0, [])) == []
    for layer in range(1, 6):
        assert list(rec.sources[layer]) == [0]
        assert rec.weights[layer].shape[-1] == 2


def test_vanilla_records_no_depth_weights(make_model, make_ids):
    """Vanilla has no depth sources, so the capture records no layer (capture_depth_weights'
    docstring); the same capture on Depth-Attention records every layer ≥ 1, so an empty result
    is vanilla's and not a capture that records nothing at all."""
    records = {}
    for method, options in [("vanilla", {}), ("depth_attention", {"stride": 1})]:
        model = build(make_model, method, options)
        with torch.no_grad(), capture_depth_weights(model) as rec:
            model(make_ids(1, 5))
        records[method] = rec
    depth = records["depth_attention"]
    assert sorted(depth.weights) == depth.layers == list(range(1, 6))
    assert all(depth.weights[l].shape == (1, 2, 5, l + 1) for l in range(1, 6))  # S(l) + l
    vanilla = records["vanilla"]
    assert vanilla.weights == {} and vanilla.sources == {} and vanilla.layers == []


# --- gradients (docs/method.md §5) -----------------------------------------------------------------


@pytest.mark.parametrize("k_norm_position", ["before_rope", "after_rope"])
def test_gradients_match_reference(make_model, make_ids, k_norm_position):
    model = build(make_model, "depth_attention", {"stride": 2, "recent_window": 1},
                  k_norm_position, num_layers=4)
    ids = make_ids(2, 5, seed=6)
    weight = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)

    model.zero_grad()
    logits = model(ids)
    (logits * weight).sum().backward()

    freq_dtype, angle_dtype = closest_precision(model.config, model.state_dict(), ids, logits)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    ref = reference_forward(model.config, params, ids, angle_dtype=angle_dtype,
                            freq_dtype=freq_dtype)
    torch.testing.assert_close(logits.detach(), ref.logits.detach(), rtol=0, atol=ATOL)
    (ref.logits * weight).sum().backward()

    named = dict(model.named_parameters())
    for name, p in params.items():
        assert named[name].grad is not None, name
        torch.testing.assert_close(named[name].grad, p.grad, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("k_norm_position", ["before_rope", "after_rope"])
def test_single_token_key_gradient_flows_only_through_the_depth_mix(make_model, make_ids,
                                                                    k_norm_position):
    """With one token, self-attention's softmax runs over one key and is constant: no gradient
    reaches any k_proj in the vanilla model. Layer 0 has no depth sources, so with
    Depth-Attention its k_proj can only be trained through the later layers' depth scores."""
    ids = make_ids(2, 1, seed=7)
    weight = torch.randn(2, 1, 128, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    grads = {}
    for method, options in [("vanilla", {}), ("depth_attention", {"stride": 1})]:
        model = build(make_model, method, options, k_norm_position)
        model.zero_grad()
        (model(ids) * weight).sum().backward()
        grads[method] = {
            name: p.grad for name, p in model.named_parameters() if p.grad is not None
        }

    k0 = "model.layers.0.self_attn.k_proj.weight"
    for layer in range(6):
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        g = grads["vanilla"].get(name)
        assert g is None or g.abs().max() < 1e-12, name
    assert grads["depth_attention"][k0].abs().max() > 1e-4
    # every layer's own key enters its own depth softmax, layer 0's only through later layers
    for layer in range(1, 6):
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        assert grads["depth_attention"][name].abs().max() > 1e-4, name
    # the depth query uses q: q_proj of layers ≥ 1 is trained at T = 1, layer 0's is not
    assert grads["depth_attention"]["model.layers.0.self_attn.q_proj.weight"].abs().max() < 1e-12
    assert grads["depth_attention"]["model.layers.3.self_attn.q_proj.weight"].abs().max() > 1e-4


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_bfloat16_model_keeps_exact_rope_frequencies(make_model, make_ids, method):
    """Casting the model to bf16 must not round RoPE's frequency table θ^(−2i/d) to bf16: with
    a rounded table the rotation error grows with the distance between tokens (≈ Δpos · 2⁻⁹ ·
    inv_freq radians: > 1 rad at Δpos ≈ 2000 for mid frequencies). Tokens 1000 positions apart
    (public ``position_ids``) must show no more bf16 error than adjacent tokens do."""
    ids = make_ids(2, 8, seed=12)
    full = make_model(seed=3, method=method, max_seq_len=8192)
    half = make_model(seed=3, method=method, max_seq_len=8192).to(torch.bfloat16)
    errors = {}
    with torch.no_grad():
        for spacing in (1, 1000):
            positions = (torch.arange(8) * spacing).expand(2, 8)
            errors[spacing] = (half(ids, position_ids=positions).float()
                               - full(ids, position_ids=positions)).abs().max().item()
    assert errors[1] < 0.1, errors  # plain bf16 noise
    assert errors[1000] < 3 * max(errors[1], 0.03), errors
