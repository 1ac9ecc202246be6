"""The benchmark scripts run end to end on CPU at tiny sizes and write the JSON they promise:
a row per implementation / method, positive times, the baseline's ratios exactly 1."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from depthattn.model.config import PRESETS


@pytest.fixture
def load_script():
    """Import a script of the benchmarks package (``python -m benchmarks.<name>``)."""
    return lambda name: importlib.import_module(f"benchmarks.{name}")


def test_depth_mix_kernel_runs(load_script, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton: a failed row, not a crash
    impls = ["reference", "unstacked", "inference"]
    out = tmp_path / "depth_mix.json"
    load_script("depth_mix_kernel").main([
        "--device", "cpu", "--batch", "1", "--seq", "9", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "8", "--sources", "1", "3", "--backward", "--warmup", "1",
        "--repeats", "2", "--impls", *impls, "triton", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu")
    assert result["peak_bandwidth_source"] == "measured copy bandwidth"
    rows = result["rows"]
    for n in (1, 3):
        for name in impls:
            timed = [r for r in rows if r["impl"] == name and r["sources"] == n]
            assert {r["pass"] for r in timed} == {"forward", "fwd+bwd"}, (name, n, timed)
            for r in timed:
                assert r["status"] == "ok", r
                assert r["ms"] > 0 and r["gb_per_s"] > 0 and r["ideal_bytes"] > 0
                if name == "reference":
                    assert r["time_ratio"] == 1.0 and r["max_rel_err"] == 0.0
        (triton,) = [r for r in rows if r["impl"] == "triton" and r["sources"] == n]
        assert triton["status"] == "failed" and triton["reason"]


def test_ideal_bytes_counts_each_tensor_once(load_script):
    ideal = load_script("depth_mix_kernel").ideal_bytes
    # B=1, T=1, d=1, H=4, H_kv=2, n=1, 2-byte elements: q 4 + keys 2·2 + values 2·2 + out 2
    assert ideal(1, 4, 2, 1, 1, 1, 2)["forward"] == 2 * 14
    # backward: q, dq 8 + keys, values, dk, dv 4·2·2 + dṽ 2, elements; lse 4·2 bytes, twice
    assert ideal(1, 4, 2, 1, 1, 1, 2)["fwd+bwd"] == 2 * 14 + 2 * 4 * 2 + 2 * (8 + 16 + 2)


def test_train_step_runs(load_script, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "test-micro", dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=16, max_seq_len=64))
    out = tmp_path / "train_step.json"
    torch.manual_seed(0)
    load_script("train_step").main([
        "--device", "cpu", "--presets", "test-micro", "--seq", "16", "32", "--batch", "2",
        "--methods", "depth_attention", "--optimizer", "--repeats", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and result["dtype"] == "float32"
    assert result["peak_flops_source"].startswith("measured matmul peak")
    rows = result["rows"]
    assert [(r["method"], r["seq"]) for r in rows] == [
        ("vanilla", 16), ("depth_attention", 16), ("vanilla", 32), ("depth_attention", 32)]
    for r in rows:
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["memory_bytes"] > 0
        assert 0 < r["mfu"] < 1
        if r["method"] == "vanilla":
            assert r["time_ratio"] == 1.0 and r["memory_ratio"] == 1.0
        else:  # Depth-Attention keeps its weights for backward: more saved bytes than vanilla
            assert r["memory_ratio"] > 1.0


def test_cache_state_table_runs(load_script, tmp_path):
    """Measured at the quickstart shape (the script stops on any disagreement with the
    accounting), closed form at the DeepSeek-V2-Lite-like one; the markdown it prints is what it
    writes."""
    script = load_script("cache_state_table")
    quickstart = script.SHAPES["Quickstart"]
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
        assert {quickstart[kind][field] for kind in script.KINDS} == {script.QUICKSTART[field]}
    out = tmp_path / "cache_state.md"
    text = script.main(["--out", str(out)])
    assert out.read_text() == text
    for line in ("| MLA | d_c + d_rope = 64 + 16 | 80 | 640 | 1,280 |",
                 "| GQA | 2·H_kv·d = 2·2·32 | 128 | 1,024 | 2,048 |",
                 "| MLA | d_c + d_rope = 512 + 64 | 576 | 15,552 | 31,104 |",
                 "| MHA | 2·H_kv·d = 2·16·128 | 4,096 | 110,592 | 221,184 |",
                 # the values rule: one mixed k̃^R (d_rope 16) stashed beside the residual in
                 # flight, and c̃ (d_c 64 per layer) in the cache
                 ("| depth_attention, MLA values rule | — | — | — | — | 144 (0.225×) | 144 | "
                  "— / — / 512 (0.8×) |"),
                 ("| depth_attention, MLA values rule | — | — | 2,112 (0.136×) | "
                  "— / — / 13,824 (0.889×) |")):
        assert line in text, line
    muddformer = [line for line in text.splitlines() if line.startswith("| muddformer |")]
    assert len(muddformer) == 2 and all(line.endswith("n/a | 0 / 0 / n/a |") for line in muddformer)
