"""Kimi's Block AttnRes (docs/baselines.md §7B): against a transcription of Kimi's Fig. 2 pseudocode,
uniform averaging (≈ vanilla) at init, accounting and options."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.methods import get_method, method_options
from depthattn.methods.baselines.attnres import DepthAggregator
from depthattn.methods.baselines.block_attnres import (
    default_block_size,
    num_blocks,
    sources_per_aggregator,
)
from tests.conftest import random_ids, tiny_config, tiny_model
from tests.methods.sublayers import (
    assert_decoding_matches_full_forward,
    sublayer_runner,
)

KV_PER_TOKEN_3B = 2 * 48 * 8 * 64  # 49 152



def block_attn_res(model: CausalLM, name: str, blocks: list, partial_block) -> torch.Tensor:
    """Kimi Fig. 2, lines 9–12: V = stack(blocks + [partial]); K = norm(V); softmax(w·K)."""
    agg = model.get_submodule(f"model.cross_layer.{name}")
    V = torch.stack(blocks + [partial_block])
    K = agg.key_gain * V / torch.sqrt(V.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
    logits = torch.einsum("d, n b t d -> n b t", agg.query, K)
    return torch.einsum("n b t, n b t d -> b t d", logits.softmax(0), V)


def reference_logits(model: CausalLM, ids: torch.Tensor, block_size: int,
                     final_aggregator: bool) -> torch.Tensor:
    """Fig. 2, lines 15–38, with 0-based layer numbers (blocks = [], partial = h₀ before the
    first layer, whose boundary check then makes h₀ block b₀); the end of the stack reads
    blocks + [last partial] like one more sublayer (or their plain sum)."""
    h0, attn, mlp, head = sublayer_runner(model, ids)
    blocks, partial_block = [], h0
    for layer_number in range(model.config.num_layers):
        h = block_attn_res(model, f"attn.{layer_number}", blocks, partial_block)
        if layer_number % (block_size // 2) == 0:
            blocks.append(partial_block)
            partial_block = None
        attn_out = attn(layer_number, h)
        partial_block = partial_block + attn_out if partial_block is not None else attn_out
        h = block_attn_res(model, f"mlp.{layer_number}", blocks, partial_block)
        partial_block = partial_block + mlp(layer_number, h)
    if final_aggregator:
        return head(block_attn_res(model, "final", blocks, partial_block))
    return head(sum(blocks) + partial_block)


@pytest.mark.parametrize("block_size,final", [(2, True), (4, True), (6, True), (12, True),
                                              (4, False), (8, False)])
def test_matches_kimis_pseudocode(block_size, final):
    model = tiny_model(seed=31, dtype=torch.float64, method="block_attnres",
                       method_options={"block_size": block_size, "final_aggregator": final})
    ids = random_ids(2, 9, seed=31)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_logits(model, ids, block_size, final),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("options", [{"block_size": 4}, {"block_size": 8},
                                     {"final_aggregator": False}])
def test_cached_decoding_equals_full_forward(options):
    """In float64: the logic is exact; see the report on the battery's float32 tolerance."""
    model = tiny_model(seed=32, dtype=torch.float64, method="block_attnres",
                       method_options=options)
    ids = random_ids(2, 8, seed=32)
    assert_decoding_matches_full_forward(model, ids)


def test_zero_query_is_the_uniform_mean():
    """Kimi §5: zero pseudo-queries ⇒ uniform weights; values raw (not normed)."""
    agg = DepthAggregator(16, 1e-6).double()
    sources = [torch.randn(2, 5, 16, dtype=torch.float64) * (j + 1) for j in range(4)]
    torch.testing.assert_close(agg(sources, [None] * 4), sum(sources) / 4, atol=1e-12, rtol=0)


@pytest.mark.parametrize("options", [{"block_size": 4}, {"block_size": 12},
                                     {"final_aggregator": False}])
def test_init_equals_vanilla_up_to_the_norms_eps(options):
    """§7B: the sources sum to the vanilla residual, the uniform mean divides it by their
    number and the next RMSNorm removes that factor, up to its eps. With eps → 0 the fresh
    model equals vanilla with the same backbone weights to rounding. (The battery,
    test_every_method.py, checks the default options.)"""
    torch.manual_seed(0)
    config = tiny_config(rms_norm_eps=1e-30, method="block_attnres", method_options=options)
    model = CausalLM(config).double().eval()
    vanilla = CausalLM(tiny_config(rms_norm_eps=1e-30)).double().eval()
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("model.cross_layer.") for k in unexpected)
    ids = random_ids(2, 10, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), vanilla(ids), atol=1e-12, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=33, method="block_attnres",
                           method_options={"block_size": 4}).train()
        model.model.activation_checkpointing = checkpointing
        model(random_ids(2, 7, seed=33)).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("L,options", [(6, {}), (7, {"block_size": 4}),
                                       (5, {"final_aggregator": False})])
def test_params_match_module_and_closed_form(L, options):
    config = tiny_config(num_layers=L, method="block_attnres", method_options=options)
    d, final = config.hidden_size, options.get("final_aggregator", True)
    added = CausalLM(config).num_parameters() - CausalLM(tiny_config(num_layers=L)).num_parameters()
    cost = get_method("block_attnres").cost(config, method_options(config))
    assert added == (2 * L + final) * 2 * d == cost.added_params  # §7B: ≈ 2L·2d


def test_blocks_and_sources():
    assert default_block_size(48) == 12 and num_blocks(48, 12) == 8  # Kimi's N ≈ 8
    assert default_block_size(6) == 2 and num_blocks(7, 4) == 4  # a shorter last block
    counts = sources_per_aggregator(48, 12, final_aggregator=True)
    assert counts[:3] == [(1, False), (2, True), (2, True)]  # [h₀]; [h₀, f_1]; [h₀, b_1^1]
    assert counts[12] == (2, False)  # layer 6 (block 2) opens on [h₀, b_1]
    assert max(n for n, _ in counts) == counts[-1][0] == 9  # [h₀, b_1..b_8]


def test_cost_at_the_3b_geometry():
    """§3/§11: ≈ 2L·2d params (+ the final aggregator's 2d); (N + 1)·(d + 1) in flight (each
    block with its cached 1/rms), 0.38×."""
    config = ModelConfig.from_preset("3b", method="block_attnres")
    assert method_options(config).block_size == 12
    cost = get_method("block_attnres").cost(config, method_options(config))
    assert cost.added_params == (2 * 48 + 1) * 2 * 2048 == 397_312
    assert cost.inflight_state_per_token == 9 * 2048 + 9
    assert round(cost.inflight_state_per_token / KV_PER_TOKEN_3B, 2) == 0.38
    assert cost.persistent_state_per_token == 0


@pytest.mark.parametrize("options,match", [
    ({"block_size": 3}, r"block_size \(3\).*even integer >= 2"),
    ({"block_size": 0}, r"block_size \(0\)"),
    ({"block_size": True}, r"block_size \(True\)"),
    ({"final_aggregator": 1}, r"final_aggregator \(1\).*true or false"),
])
def test_invalid_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(method="block_attnres", method_options=options)
