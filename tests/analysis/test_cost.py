"""Cost accounting: the backbone's closed forms against the real module, every registered
method's ``cost()`` against its real parameter count (GQA and MLA models), the 3B numbers of the
paper and docs/baselines.md §3, the MLA terms of docs/method.md §8 and §9, and the
``depthattn flops`` command."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from depthattn import CausalLM, KVCache, ModelConfig
from depthattn.analysis.cost import (
    BYTES_PER_ELEMENT,
    CostReport,
    backbone_cost,
    cost_report,
    format_cost_report,
    format_cost_table,
    method_cost,
)
from depthattn.cli import main
from depthattn.cli.flops import add_flops_arguments, parse_options, run_flops
from depthattn.methods import MethodCost, method_names
from tests.conftest import TINY_MLA, tiny_config

GEOMETRIES = [
    {},  # TINY: GQA, head_dim 16
    {"num_kv_heads": 4, "tie_embeddings": True},  # MHA, tied
    {"num_heads": 8, "num_kv_heads": 1, "head_dim": 8, "intermediate_size": 40},  # MQA, narrow heads
    TINY_MLA,  # multi-head latent attention: q_proj, kv_a/kv_b, kv_a_layernorm
    {**TINY_MLA, "q_lora_rank": 24, "tie_embeddings": True},  # q_a/q_b with q_a_layernorm, tied
]
MLA_METHODS = [m for m in method_names() if m != "muddformer"]  # muddformer refuses MLA


@pytest.mark.parametrize("overrides", GEOMETRIES)
def test_backbone_counts_match_the_module(overrides):
    config = tiny_config(**overrides)
    model = CausalLM(config)
    cost = backbone_cost(config, seq_len=32)
    assert cost.params == model.num_parameters()
    assert cost.embedding_params == model.model.embed_tokens.weight.numel()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert cost.matmul_params == sum(m.weight.numel() for m in linears)  # LM head included
    assert cost.matmul_flops_per_token == 2 * cost.matmul_params
    assert cost.residual_per_token == config.hidden_size


@pytest.mark.parametrize("T", [1, 2, 7, 64])
def test_attention_flops_are_the_causal_average(T):
    """Token t (1-based) does q·k and p·v over t keys: 4·d_h FLOPs per key, head and layer."""
    config = tiny_config()
    per_key = 4 * config.head_dim * config.num_heads * config.num_layers
    brute = sum(t * per_key for t in range(1, T + 1)) / T
    assert backbone_cost(config, seq_len=T).attention_flops_per_token == pytest.approx(brute)


@pytest.mark.parametrize("T", [1, 3, 7, 64])
def test_sliding_layers_see_at_most_their_window(T):
    """Half the layers slide over 3 tokens: there token t sees min(t, 3) keys."""
    config = tiny_config(sliding_window=3, layer_types=["full_attention", "sliding_attention"] * 3)
    per_key = 4 * config.head_dim * config.num_heads
    brute = sum(per_key * (t if kind == "full_attention" else min(t, 3))
                for kind in config.layer_types for t in range(1, T + 1)) / T
    assert backbone_cost(config, seq_len=T).attention_flops_per_token == pytest.approx(brute)


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_kv_cache_per_token_matches_the_real_cache(dtype, torch_dtype):
    config = tiny_config()
    model = CausalLM(config)
    report = cost_report(config, seq_len=32, dtype=dtype)
    cache = KVCache.for_model(model, batch_size=1, max_len=32, dtype=torch_dtype)
    assert report.kv_cache_bytes_per_token * 32 == cache.nbytes
    assert report.backbone.kv_cache_per_token == 2 * 6 * 2 * 16


def test_mla_attention_flops_score_d_qk_and_mix_d_v():
    """Per key, head and layer: q·k over d_nope + d_rope = 24, p·v over d_v = 20."""
    config = tiny_config(**TINY_MLA)
    T = 7
    brute = sum(t * 2 * (24 + 20) * 4 * 6 for t in range(1, T + 1)) / T
    assert backbone_cost(config, seq_len=T).attention_flops_per_token == pytest.approx(brute)


@pytest.mark.parametrize("options, value_width", [({}, 0), ({"mla_mix": "values"}, 32)])
def test_mla_kv_cache_per_token_matches_the_real_cache(options, value_width):
    """The vanilla MLA cache, (d_c + d_rope)·L; the values rule's cache also holds c̃, d_c per
    token and layer, which the accounting reports as persistent state beyond it."""
    config = tiny_config(**TINY_MLA, method="depth_attention", method_options=options)
    report = cost_report(config, seq_len=32, dtype="fp32")
    cache = KVCache.for_model(CausalLM(config), batch_size=1, max_len=32, dtype=torch.float32)
    assert report.backbone.kv_cache_per_token == 6 * (32 + 8)
    assert report.added.persistent_state_per_token == 6 * value_width
    assert cache.nbytes == 32 * 4 * (report.backbone.kv_cache_per_token
                                     + report.added.persistent_state_per_token)


def test_mla_depth_attention_cost_by_hand():
    """stride 3 over 6 layers: layers 1-3 mix [0], layers 4-5 mix [0, 3]. Entries are
    d_c + d_rope = 40 wide; u_l is H·d_nope·d_c = 4·16·32 multiply-adds, r̄_l H·d_rope = 32
    adds."""
    latent = method_cost(tiny_config(**TINY_MLA, method="depth_attention"))
    u = 2 * 4 * 16 * 32
    mix = 3 * (2 * 4 * 40) + 2 * (3 * 4 * 40)  # (|S|+1)·(2W scores + 2W mix)
    assert latent.added_matmul_flops_per_token == 5 * u + mix
    assert latent.added_flops_per_token == 5 * u + mix + 5 * 32
    assert (latent.added_params, latent.inflight_state_per_token,
            latent.persistent_state_per_token) == (0, 64, 0)
    values = method_cost(tiny_config(**TINY_MLA, method="depth_attention",
                                     method_options={"mla_mix": "values"}))
    assert values.added_flops_per_token == latent.added_flops_per_token
    # c̃ in the cache: d_c per token and layer; k̃^R_3 in the stash, beside the residual
    assert values.persistent_state_per_token == 6 * 32
    assert values.inflight_state_per_token == 64 + 8
    every = method_cost(tiny_config(**TINY_MLA, method="depth_attention",
                                    method_options={"mla_mix": "values", "stride": 1}))
    assert every.inflight_state_per_token == 64 + 4 * 8  # layers 1-4 stashed, mixed


def test_mla_latent_residual_cost():
    fixed = method_cost(tiny_config(**TINY_MLA, method="value_residual"))
    learned = method_cost(tiny_config(**TINY_MLA, method="value_residual",
                                      method_options={"mode": "learned"}))
    for cost in (fixed, learned):  # (1 − λ)·e_l + λ·e_0 on the 40 numbers of an entry
        assert cost.added_flops_per_token == 5 * 3 * 40
        assert cost.added_matmul_flops_per_token == 0
        assert cost.inflight_state_per_token == 64 and cost.persistent_state_per_token == 0
    assert (fixed.added_params, learned.added_params) == (0, 5)
    with pytest.raises(ValueError, match="gated.*no form on multi-head latent attention"):
        tiny_config(**TINY_MLA, method="value_residual", method_options={"mode": "gated"})


@pytest.mark.parametrize("method", method_names())
def test_every_method_cost_counts_its_real_parameters(method):
    """Generic over the registry: each method's closed-form ``cost()`` must equal the
    parameters its module really adds, and report sane state numbers."""
    check_cost_counts_real_parameters(tiny_config(method=method), method)


@pytest.mark.parametrize("method, options", [(m, {}) for m in MLA_METHODS] + [
    ("depth_attention", {"mla_mix": "values"}), ("value_residual", {"mode": "learned"}),
    ("depth_attention+mhc", {"depth_attention": {"mla_mix": "values"}})])
def test_every_method_cost_counts_its_real_parameters_on_mla(method, options):
    check_cost_counts_real_parameters(
        tiny_config(**TINY_MLA, method=method, method_options=options), method)


def test_muddformer_refuses_mla():
    with pytest.raises(ValueError, match="muddformer cannot run on multi-head latent"):
        cost_report(ModelConfig.from_preset("mla-tiny", method="muddformer"))


def check_cost_counts_real_parameters(config: ModelConfig, method: str) -> None:
    """``cost()`` against the module's real parameters, and sane state numbers."""
    report = cost_report(config)
    assert isinstance(report.added, MethodCost)
    assert report.total_params == CausalLM(config).num_parameters()
    assert report.added.added_flops_per_token >= 0
    assert report.added.inflight_state_per_token >= config.hidden_size  # at least the residual
    assert report.added.persistent_state_per_token >= 0
    assert method in format_cost_report(report) and method in format_cost_table([report])


def test_combined_in_flight_state_counts_the_residual_once():
    """mHC's streams (4·d) and Depth-Attention's MLA values-rule stash (one k̃^R, 8) add."""
    config = tiny_config(**TINY_MLA, method="depth_attention+mhc",
                         method_options={"depth_attention": {"mla_mix": "values"}})
    assert method_cost(config).inflight_state_per_token == 4 * 64 + 8
    assert method_cost(tiny_config(method="depth_attention+mhc")).inflight_state_per_token == \
        4 * 64


def test_method_cost_uses_the_resolved_options():
    every = method_cost(tiny_config(method="depth_attention", method_options={"stride": 1}))
    default = method_cost(tiny_config(method="depth_attention"))
    assert every.added_flops_per_token > default.added_flops_per_token > 0


# --- the paper's 3B geometry, without instantiating a 3B model ---------------------------------
def report_3b(method: str, **options) -> CostReport:
    return cost_report(ModelConfig.from_preset("3b", method=method, method_options=options))


def test_3b_depth_attention_is_under_a_hundredth_of_a_percent():
    """Paper: < 0.01 % extra FLOPs, 0 parameters, 0 persistent state."""
    report = report_3b("depth_attention")
    assert report.options["stride"] == 24
    assert 0 < report.added_flops_fraction < 1e-4
    assert report.added.added_params == 0 and report.added.persistent_state_per_token == 0
    assert report.kv_cache_bytes_per_token == 2 * 49_152  # bf16


def test_3b_baseline_numbers_of_baselines_section_3():
    vanilla = report_3b("vanilla")
    assert vanilla.backbone.kv_cache_per_token == 49_152
    assert round(vanilla.inflight_vs_kv_cache, 2) == 0.04
    mhc, hc = report_3b("mhc"), report_3b("hyper_connections")
    assert mhc.added.added_params == 19_663_396
    assert hc.added.added_params == 1_378_752
    assert round(mhc.inflight_vs_kv_cache, 2) == round(hc.inflight_vs_kv_cache, 2) == 0.17
    assert mhc.added.inflight_state_per_token - vanilla.added.inflight_state_per_token == 6_144


# --- printing and the command ------------------------------------------------------------------
def flops(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    add_flops_arguments(parser)
    run_flops(parser.parse_args(list(argv)))


def test_flops_command_prints_every_quantity(capsys):
    flops("--preset", "3b", "--method", "depth_attention")
    out = capsys.readouterr().out
    for text in ("3b / depth_attention", "stride=24", "T = 2048", "parameters", "added by method",
                 "FLOPs / token", "% of total", "49,152 elements = 98,304 bytes",
                 "in-flight state", "0.04× the KV cache", "persistent state"):
        assert text in out, text


def test_flops_command_passes_options_sequence_and_dtype(capsys):
    flops("--preset", "tiny", "--method", "depth_attention", "--option", "stride=1",
          "--seq", "128", "--dtype", "fp32")
    out = capsys.readouterr().out
    assert "stride=1" in out and "T = 128" in out and "fp32" in out


def test_flops_command_all_methods_table(capsys):
    flops("--preset", "tiny", "--method", "all")
    out = capsys.readouterr().out
    for name in method_names():
        assert f"\n{name} " in out


def test_flops_command_prints_mla_models(capsys):
    """The cache is the latent entry, (d_c + d_rope) per token and layer; the values rule keeps
    c̃ too, d_c per token and layer, reported as persistent state beyond it."""
    flops("--preset", "mla-quickstart", "--method", "depth_attention", "--seq", "128")
    out = capsys.readouterr().out
    for text in ("mla-quickstart / depth_attention", "mla_mix=latent", "stride=4", "T = 128",
                 "640 elements = 1,280 bytes  (MLA: L·(d_c + d_rope) = 8·(64 + 16))",
                 "in-flight state     128 elements", "persistent state    0 elements"):
        assert text in out, text
    flops("--preset", "mla-quickstart", "--method", "depth_attention", "--option",
          "mla_mix=values")
    out = capsys.readouterr().out
    assert "mla_mix=values" in out and "persistent state    512 elements" in out  # 8·64
    assert "(0.80× the KV cache per token)" in out


def test_flops_command_all_methods_on_mla_marks_the_refused(capsys):
    flops("--preset", "mla-quickstart", "--method", "all")
    out = capsys.readouterr().out
    assert "KV cache MLA: L·(d_c + d_rope) = 8·(64 + 16)" in out
    for name in method_names():
        if name != "muddformer":
            assert f"\n{name} " in out
    assert "\nn/a: muddformer cannot run on multi-head latent attention" in out


def test_flops_command_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"mhc option num_streams \(1\)"):
        flops("--method", "mhc", "--option", "num_streams=1")
    with pytest.raises(ValueError, match=r"unknown option.*'stride'.*'vanilla'"):
        flops("--method", "vanilla", "--option", "stride=2")
    with pytest.raises(ValueError, match=r"--option 'stride' must look like key=value"):
        flops("--method", "depth_attention", "--option", "stride")
    with pytest.raises(ValueError, match=r"needs one --method"):
        flops("--method", "all", "--option", "stride=2")
    with pytest.raises(ValueError, match=r"seq_len \(0\)"):
        flops("--preset", "tiny", "--seq", "0")
    with pytest.raises(ValueError, match=r"dtype \('int4'\) is unknown"):
        cost_report(tiny_config(), dtype="int4")


def test_parse_options_reads_json_values():
    assert parse_options(["stride=2", "alpha_init=0.5", "name=abc", "flag=true"]) == \
        {"stride": 2, "alpha_init": 0.5, "name": "abc", "flag": True}
    assert set(BYTES_PER_ELEMENT) >= {"bf16", "fp16", "fp32"}


def test_mounted_in_the_main_cli(capsys):
    assert main(["flops", "--preset", "tiny", "--method", "mhc", "--dtype", "fp32"]) == 0
    assert "tiny / mhc" in capsys.readouterr().out
    assert main(["flops", "--method", "mhc", "--option", "sinkhorn_iters=0"]) == 2
