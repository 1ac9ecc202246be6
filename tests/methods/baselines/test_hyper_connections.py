"""Hyper-connections (docs/baselines.md §5): the connector against a per-token transcription of the
equations, what the init guarantees (every stream equals the vanilla residual), parameter counts
against the closed form, the 3B-geometry numbers of §3, option validation. The shared battery
(test_every_method.py) covers decoding, padding, save/load, names, activation checkpointing and
the logits being vanilla at init."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.methods import method_options
from depthattn.methods.baselines.hyper_connections import (
    HyperConnection,
    HyperConnections,
)
from tests.conftest import random_ids, randomize_, tiny_config, tiny_model


def closed_form_params(L: int, d: int, n: int) -> int:
    return 2 * L * (d * (n + 3) + n * n + 2 * n + 2)


def reference_connector(conn: HyperConnection, H: torch.Tensor, f_out: torch.Tensor):
    """One token, written out: H (n, d), f_out = F(u) (d,) → (u, H')."""
    n = conn.num_streams
    Hn = H * torch.rsqrt(H.pow(2).mean(-1, keepdim=True) + conn.norm.eps) * conn.norm.weight
    W_alpha, w_beta = conn.proj[: n + 1].T, conn.proj[n + 1]  # (d, n+1), (d,)
    A = conn.static_width.view(n, n + 1) + conn.width_gate * torch.tanh(Hn @ W_alpha)
    B = conn.static_depth + conn.depth_gate * torch.tanh(Hn @ w_beta)
    u = sum(A[s, 0] * H[s] for s in range(n))
    H_new = torch.stack([B[t] * f_out + sum(A[s, 1 + t] * H[s] for s in range(n))
                         for t in range(n)])
    return u, H_new


@pytest.mark.parametrize("n", [1, 3, 4])
def test_connector_matches_the_equations_token_by_token(n):
    torch.manual_seed(0)
    conn = HyperConnection(hidden_size=16, num_streams=n, input_stream=0, gate_init=0.01, eps=1e-6)
    randomize_(conn, seed=n, std=0.5)  # every parameter away from its init
    x = torch.randn(2, 3, n, 16, dtype=torch.float32)
    f_out = torch.randn(2, 3, 16)
    a_m, a_r, b = conn.maps(x)
    u = conn.branch_input(x, a_m)
    new = conn.update(x, f_out, a_r, b)
    for i in range(2):
        for t in range(3):
            ref_u, ref_new = reference_connector(conn, x[i, t], f_out[i, t])
            torch.testing.assert_close(u[i, t], ref_u, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(new[i, t], ref_new, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_stream_equals_the_vanilla_residual_at_init(n):
    """§5: W = 0, A_m = one-hot at (sublayer mod n), A_r = I, B = 1 ⇒ every stream equals the
    vanilla residual after every layer (and the readout is their sum)."""
    torch.manual_seed(0)
    hc = CausalLM(tiny_config(method="hyper_connections", method_options={"num_streams": n}))
    vanilla = randomize_(CausalLM(tiny_config()), seed=1)  # any backbone will do
    missing, unexpected = hc.load_state_dict(vanilla.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("model.cross_layer.") for k in missing)

    outputs = {"hc": [], "vanilla": []}
    for name, model in (("hc", hc), ("vanilla", vanilla)):
        for block in model.model.layers:
            block.register_forward_hook(lambda m, i, o, name=name: outputs[name].append(o))
    ids = random_ids(2, 7, seed=3)
    with torch.no_grad():
        hc(ids)
        vanilla(ids)
        final = hc.model.cross_layer.final_hidden(outputs["hc"][-1], None)
    for streams, residual in zip(outputs["hc"], outputs["vanilla"], strict=True):
        assert streams.x.shape == (2, 7, n, 64)
        for s in range(n):
            torch.testing.assert_close(streams.x[..., s, :], residual, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(final, n * outputs["vanilla"][-1], atol=1e-5, rtol=1e-6)


def test_maps_are_dynamic_per_token():
    model = tiny_model(seed=2, method="hyper_connections")
    conn = model.model.cross_layer.connectors[3]
    x = torch.randn(1, 5, 4, 64)
    a_m, a_r, b = conn.maps(x)
    assert not torch.allclose(a_m[0, 0], a_m[0, 1])  # different tokens, different weights
    assert a_m.dtype == a_r.dtype == b.dtype == torch.float32


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_parameter_count_matches_the_closed_form(n):
    config = tiny_config(method="hyper_connections", method_options={"num_streams": n})
    model = CausalLM(config)
    extra = sum(p.numel() for p in model.model.cross_layer.parameters())
    expected = closed_form_params(config.num_layers, config.hidden_size, n)
    assert extra == expected
    assert HyperConnections.cost(config, method_options(config)).added_params == expected
    assert model.num_parameters() == CausalLM(tiny_config()).num_parameters() + expected


def test_3b_geometry_numbers():
    """docs/baselines.md §3: HC (n=4) adds 1 378 752 parameters; n·d = 8 192 of in-flight state."""
    config = ModelConfig.from_preset("3b", method="hyper_connections")
    cost = HyperConnections.cost(config, method_options(config))
    assert cost.added_params == 1_378_752
    assert cost.inflight_state_per_token == 8_192
    assert cost.persistent_state_per_token == 0


def test_defaults_are_the_paper_settings():
    options = method_options(tiny_config(method="hyper_connections"))
    assert (options.num_streams, options.gate_init) == (4, 0.01)


@pytest.mark.parametrize("option, value, message", [
    ("num_streams", 0, r"hyper_connections option num_streams \(0\) must be an integer >= 1"),
    ("num_streams", 2.5, r"num_streams \(2\.5\) must be an integer >= 1"),
    ("num_streams", True, r"num_streams \(True\) must be an integer"),
    ("gate_init", -0.1, r"hyper_connections option gate_init \(-0\.1\) must be a finite number >= 0"),
    ("gate_init", float("nan"), r"gate_init \(nan\) must be a finite number"),
    ("gate_init", "big", r"gate_init \('big'\) must be a finite number"),
])
def test_invalid_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(method="hyper_connections", method_options={option: value})


def test_backward_reaches_every_connector_at_init():
    """At init W = 0, so the gates' gradients are 0 — but W's are not (s ≠ 0): training can
    leave the init."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method="hyper_connections")).train()
    ids = random_ids(2, 9, seed=4)
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for conn in model.model.cross_layer.connectors:
        assert conn.proj.grad.abs().sum() > 0



@pytest.mark.parametrize("method", ["hyper_connections", "mhc", "attnres"])
def test_single_number_parameters_are_1d_and_old_0d_checkpoints_load(method):
    """FSDP2 shards no 0-d parameter: the gates are (1,); a state dict written when they were
    0-d still loads, to the same values."""
    model = tiny_model(seed=1, method=method)
    scalars = {k: v for k, v in model.state_dict().items() if v.numel() == 1}
    assert scalars and all(v.shape == (1,) for v in scalars.values())
    old = {k: (v.reshape(()) + 1 if k in scalars else v) for k, v in model.state_dict().items()}
    fresh = tiny_model(seed=2, method=method)
    fresh.load_state_dict(old, strict=True)
    for k in scalars:
        assert fresh.state_dict()[k].shape == (1,) and fresh.state_dict()[k] == old[k]
