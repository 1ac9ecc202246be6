"""mHC (docs/baselines.md §6): Sinkhorn against a plain Sinkhorn–Knopp written out here and its
doubly stochastic mixing, the connector against a per-token transcription of the equations
(using that plain Sinkhorn, not the implementation's), what the init guarantees (static maps;
vanilla when the α gates are closed: the battery), parameter counts against the closed form,
the 3B numbers of §3, option validation. The shared battery (test_every_method.py) covers the
rest, activation checkpointing included."""

from __future__ import annotations

import math

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.methods import method_options
from depthattn.methods.baselines.mhc import MHC, ManifoldConnector, sinkhorn
from tests.conftest import random_ids, randomize_, tiny_config, tiny_model


def closed_form_params(L: int, d: int, n: int) -> int:
    return 2 * L * (n * d * (n * n + 2 * n + 1) + n * n + 2 * n + 3) + n


def record_maps(monkeypatch) -> list:
    """Patch ManifoldConnector.maps to keep every (h_pre, h_post, H_res) it returns."""
    seen, original = [], ManifoldConnector.maps

    def maps(self, x):
        out = original(self, x)
        seen.append(out)
        return out

    monkeypatch.setattr(ManifoldConnector, "maps", maps)
    return seen


# --- Sinkhorn ------------------------------------------------------------------------------------
def reference_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn–Knopp on one n×n matrix as `sinkhorn`'s docstring states it, written out entry
    by entry in float64 (independent of the implementation): subtract the max, exponentiate,
    clamp at 1e-12, then ``iters`` times normalise every row, then every column (each sum
    clamped at 1e-12 too)."""
    n = logits.shape[-1]
    assert logits.shape == (n, n)
    rows = [[float(v) for v in row] for row in logits.tolist()]
    top = max(max(row) for row in rows)
    m = [[max(math.exp(v - top), 1e-12) for v in row] for row in rows]
    for _ in range(iters):
        for i in range(n):
            total = max(sum(m[i]), 1e-12)
            m[i] = [v / total for v in m[i]]
        for j in range(n):
            total = max(sum(m[i][j] for i in range(n)), 1e-12)
            for i in range(n):
                m[i][j] = m[i][j] / total
    return torch.tensor(m, dtype=torch.float64)


@pytest.mark.parametrize("iters", [1, 3, 20])
@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])
def test_sinkhorn_matches_the_plain_reference(iters, scale):
    """Also far from uniform (scale 40: exponentials down to the 1e-12 floor)."""
    logits = torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(iters)) * scale
    got = sinkhorn(logits, iters)
    for b in range(len(logits)):
        torch.testing.assert_close(got[b].double(), reference_sinkhorn(logits[b], iters),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_sinkhorn_is_doubly_stochastic(n):
    logits = torch.randn(500, n, n, generator=torch.Generator().manual_seed(n)) * 0.5
    matrix = sinkhorn(logits, 20)
    assert matrix.dtype == torch.float32 and (matrix > 0).all()
    torch.testing.assert_close(matrix.sum(-1), torch.ones(500, n), atol=1e-5, rtol=0)
    torch.testing.assert_close(matrix.sum(-2), torch.ones(500, n), atol=1e-5, rtol=0)


def test_sinkhorn_columns_are_exact_rows_converge():
    """§6: the last step normalises columns (exact); rows approach 1 as iterations grow — slowly
    for wide logit ranges or near-identity matrices, which 20 iterations leave ~1e-4 off."""
    logits = torch.randn(500, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.5
    for iters in (1, 20):
        torch.testing.assert_close(sinkhorn(logits, iters).sum(-2), torch.ones(500, 4),
                                   atol=1e-6, rtol=0)
    errors = [(sinkhorn(logits, iters).sum(-1) - 1).abs().max() for iters in (1, 20, 500)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5


def test_sinkhorn_keeps_a_doubly_stochastic_matrix_and_ignores_a_constant_shift():
    target = torch.full((4, 4), 0.01 / 3).fill_diagonal_(0.99)  # the init's H_res
    torch.testing.assert_close(sinkhorn(target.log(), 20), target, atol=1e-6, rtol=0)
    logits = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sinkhorn(logits + 7.0, 20), sinkhorn(logits, 20))


def test_sinkhorn_is_fp32_for_bf16_logits():
    assert sinkhorn(torch.randn(2, 4, 4, dtype=torch.bfloat16), 20).dtype == torch.float32


def test_residual_mixing_in_a_model_is_doubly_stochastic(monkeypatch):
    """Every H_res the trained-looking (random-weight) model uses sums to 1 over rows and
    columns within 1e-5; at init (H_res ≈ I + α-perturbation, a near-identity matrix that
    Sinkhorn converges on slowly) columns are exact and rows within 1e-3 after 20 iterations."""
    seen = record_maps(monkeypatch)
    with torch.no_grad():
        tiny_model(seed=5, method="mhc")(random_ids(2, 9, seed=5))
    H = torch.stack([h_res for _, _, h_res in seen])
    assert len(seen) == 2 * 6 and H.shape[-2:] == (4, 4)
    torch.testing.assert_close(H.sum(-1), torch.ones_like(H.sum(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(H.sum(-2), torch.ones_like(H.sum(-2)), atol=1e-5, rtol=0)

    seen.clear()
    torch.manual_seed(0)
    with torch.no_grad():
        CausalLM(tiny_config(method="mhc"))(random_ids(2, 9, seed=5))
    H = torch.stack([h_res for _, _, h_res in seen])
    torch.testing.assert_close(H.sum(-2), torch.ones_like(H.sum(-2)), atol=1e-6, rtol=0)
    torch.testing.assert_close(H.sum(-1), torch.ones_like(H.sum(-1)), atol=1e-3, rtol=0)


# --- the connector ---------------------------------------------------------------------------------
def reference_connector(conn: ManifoldConnector, X: torch.Tensor, f_out: torch.Tensor):
    """One token, written out: X (n, d), f_out = F(u) (d,) → (u, X')."""
    n = conn.num_streams
    flat = X.reshape(-1)
    x_tilde = flat * torch.rsqrt(flat.pow(2).mean() + conn.norm.eps) * conn.norm.weight
    z = conn.proj @ x_tilde  # Φᵀ x̃: [pre (n) | post (n) | res (n²)]
    h_pre = torch.sigmoid(conn.alpha_pre * z[:n] + conn.bias_pre)
    h_post = 2 * torch.sigmoid(conn.alpha_post * z[n:2 * n] + conn.bias_post)
    H_res = reference_sinkhorn((conn.alpha_res * z[2 * n:] + conn.bias_res).view(n, n),
                               conn.sinkhorn_iters).to(X.dtype)
    u = sum(h_pre[s] * X[s] for s in range(n))
    X_new = torch.stack([sum(H_res[i, j] * X[j] for j in range(n)) + h_post[i] * f_out
                         for i in range(n)])
    return u, X_new


@pytest.mark.parametrize("n", [2, 4])
def test_connector_matches_the_equations_token_by_token(n):
    torch.manual_seed(0)
    conn = ManifoldConnector(hidden_size=16, num_streams=n, alpha_init=0.01, sinkhorn_iters=20,
                             init_std=0.02, eps=1e-6)
    randomize_(conn, seed=n, std=0.3)
    x = torch.randn(2, 3, n, 16)
    f_out = torch.randn(2, 3, 16)
    h_pre, h_post, h_res = conn.maps(x)
    u = conn.branch_input(x, h_pre)
    new = conn.update(x, f_out, h_post, h_res)
    for i in range(2):
        for t in range(3):
            ref_u, ref_new = reference_connector(conn, x[i, t], f_out[i, t])
            torch.testing.assert_close(u[i, t], ref_u, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(new[i, t], ref_new, atol=1e-5, rtol=1e-5)


# --- the init ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4])
def test_static_maps_at_init(n):
    """§6 init: h_pre = 1/n, h_post = 1, H_res = 0.99 on the diagonal and 0.01/(n−1) off it
    (what the maps are with the dynamic terms switched off, α = 0); the readout is the mean."""
    config = tiny_config(method="mhc", method_options={"num_streams": n, "alpha_init": 0.0})
    model = CausalLM(config)
    expected_res = torch.full((n, n), 0.01 / (n - 1)).fill_diagonal_(0.99)
    for conn in model.model.cross_layer.connectors:
        h_pre, h_post, h_res = conn.maps(torch.randn(1, 2, n, 64))
        torch.testing.assert_close(h_pre, torch.full_like(h_pre, 1 / n))
        torch.testing.assert_close(h_post, torch.ones_like(h_post))
        torch.testing.assert_close(h_res, expected_res.expand_as(h_res), atol=1e-6, rtol=0)
        assert conn.alpha_pre.item() == conn.alpha_post.item() == conn.alpha_res.item() == 0.0
    assert torch.equal(model.model.cross_layer.readout, torch.zeros(n))
    default = CausalLM(tiny_config(method="mhc")).model.cross_layer.connectors[0]
    assert default.alpha_pre.item() == default.alpha_res.item() == pytest.approx(0.01)
    assert default.proj.std().item() == pytest.approx(0.02, rel=0.05)  # N(0, init_std²), not 0


def test_default_init_is_vanilla_up_to_the_gated_perturbation():
    torch.manual_seed(0)
    mhc = CausalLM(tiny_config(method="mhc"))
    vanilla = CausalLM(tiny_config())
    vanilla.load_state_dict(mhc.state_dict(), strict=False)
    ids = random_ids(2, 11, seed=7)
    with torch.no_grad():
        gap = (mhc(ids) - vanilla(ids)).abs().max().item()
    assert 0 < gap < 1e-2


def test_maps_are_fp32_in_a_bf16_model(monkeypatch):
    seen = record_maps(monkeypatch)
    model = tiny_model(seed=1, method="mhc", dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(random_ids(1, 5, seed=1))
    assert torch.isfinite(logits).all() and logits.dtype == torch.bfloat16
    assert all(m.dtype == torch.float32 for maps in seen for m in maps)


def test_streams_keep_fp32_under_bf16_autocast():
    model = tiny_model(seed=1, method="mhc")
    captured = []
    model.model.layers[-1].register_forward_hook(lambda m, i, o: captured.append(o.x.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(random_ids(1, 5, seed=1))
    assert captured == [torch.float32]


# --- counts and options ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4])
def test_parameter_count_matches_the_closed_form(n):
    config = tiny_config(method="mhc", method_options={"num_streams": n})
    model = CausalLM(config)
    extra = sum(p.numel() for p in model.model.cross_layer.parameters())
    expected = closed_form_params(config.num_layers, config.hidden_size, n)
    assert extra == expected
    assert MHC.cost(config, method_options(config)).added_params == expected
    assert model.num_parameters() == CausalLM(tiny_config()).num_parameters() + expected


def test_3b_geometry_numbers():
    """docs/baselines.md §3: mHC adds 19 663 396 parameters (~0.6–0.7 % of the model) and keeps
    4d = 8 192 elements per in-flight token, 0.17× the 49 152-element KV cache."""
    config = ModelConfig.from_preset("3b", method="mhc")
    cost = MHC.cost(config, method_options(config))
    assert cost.added_params == 19_663_396
    assert cost.inflight_state_per_token == 8_192
    assert round(cost.inflight_state_per_token / 49_152, 2) == 0.17
    assert cost.persistent_state_per_token == 0


def test_defaults_are_the_paper_settings():
    options = method_options(tiny_config(method="mhc"))
    assert (options.num_streams, options.alpha_init, options.sinkhorn_iters) == (4, 0.01, 20)


@pytest.mark.parametrize("option, value, message", [
    ("num_streams", 1, r"mhc option num_streams \(1\) must be an integer >= 2"),
    ("num_streams", "4", r"num_streams \('4'\) must be an integer >= 2"),
    ("alpha_init", -1, r"mhc option alpha_init \(-1\) must be a finite number >= 0"),
    ("alpha_init", math.inf, r"alpha_init \(inf\) must be a finite number"),
    ("sinkhorn_iters", 0, r"mhc option sinkhorn_iters \(0\) must be an integer >= 1"),
    ("sinkhorn_iters", 2.0, r"sinkhorn_iters \(2\.0\) must be an integer >= 1"),
])
def test_invalid_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(method="mhc", method_options={option: value})

