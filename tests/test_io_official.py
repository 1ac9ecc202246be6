"""The authors' checkpoint format → our model, against a plain float64 formula of their math.

The formula below is written from docs/design.md §3, independently of the
depthattn model code: per layer RMSNorm, q/k/v projections, q_norm BEFORE RoPE, k_norm AFTER
RoPE (also for the keys of sequence attention), Depth-Attention with the group-mean query over
S(l) = {j < l : j % s == 0 or j >= l - w} plus the layer itself, recursive mixed values, causal
attention over the mixed values, SwiGLU. The RoPE angles are computed in float32, as their code
does even in a float64 model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from depthattn.hf.convert import from_official
from depthattn.io import folder_kind, load_model
from depthattn.model.cache import KVCache

GEOMETRY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                rope_theta=10000.0, max_position_embeddings=64)


def official_config(**changes) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **GEOMETRY,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "initializer_range": 0.02, "bos_token_id": 0,
            "eos_token_id": 0, "pad_token_id": 1, "torch_dtype": "float32",
            "use_qk_norm": True, "use_depth_attention": True, "recurrent_model": True,
            "depth_attention_stride": 2, "depth_attention_recent_window": 1,
            "scale_embeds": False, **changes}


def official_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3 key names (float64) plus their unused lm_head_layernorm."""
    g = torch.Generator().manual_seed(seed)
    D, I, V = GEOMETRY["hidden_size"], GEOMETRY["intermediate_size"], GEOMETRY["vocab_size"]
    H, Hkv, d = 4, 2, 8

    def mat(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.2

    def gain(n):  # non-uniform gains: k_norm before vs after RoPE then differ
        return torch.rand(n, generator=g, dtype=torch.float64) + 0.5

    w = {"model.embed_tokens.weight": mat(V, D), "model.norm.weight": gain(D),
         "lm_head.weight": mat(V, D), "lm_head_layernorm.weight": gain(D)}
    for i in range(GEOMETRY["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": gain(D),
                  p + "post_attention_layernorm.weight": gain(D),
                  p + "self_attn.q_proj.weight": mat(H * d, D),
                  p + "self_attn.k_proj.weight": mat(Hkv * d, D),
                  p + "self_attn.v_proj.weight": mat(Hkv * d, D),
                  p + "self_attn.o_proj.weight": mat(D, H * d),
                  p + "self_attn.q_norm.weight": gain(d), p + "self_attn.k_norm.weight": gain(d),
                  p + "mlp.gate_proj.weight": mat(I, D), p + "mlp.up_proj.weight": mat(I, D),
                  p + "mlp.down_proj.weight": mat(D, I)})
    return w


# --- the plain formula ------------------------------------------------------------------------
def rms(x, weight, eps=GEOMETRY["rms_norm_eps"]):
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def rope(x, theta=GEOMETRY["rope_theta"]):
    """x (heads, T, d): rotate-half RoPE at positions 0..T-1, angles in float32."""
    T, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().double(), angles.sin().double()
    rotated = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * cos + rotated * sin


def formula_logits(w, ids, depth: bool, stride=2, window=1, k_norm_after_rope=True):
    """One sequence ids (T,) → logits (T, V)."""
    L, H, Hkv, d = GEOMETRY["num_hidden_layers"], 4, 2, 8
    G, T = H // Hkv, ids.shape[0]
    x = w["model.embed_tokens.weight"][ids]
    stash = {}  # layer → (normalised key, mixed value), each (Hkv, T, d)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(L):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, d).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, Hkv, d).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, Hkv, d).transpose(0, 1)
        q = rope(rms(q, w[p + "self_attn.q_norm.weight"]))  # q_norm, then RoPE
        if k_norm_after_rope:
            k = rms(rope(k), w[p + "self_attn.k_norm.weight"])  # RoPE, then k_norm
        else:
            k = rope(rms(k, w[p + "self_attn.k_norm.weight"]))
        sources = [j for j in range(layer) if j % stride == 0 or j >= layer - window]
        if depth and sources:
            q_bar = q.view(Hkv, G, T, d).mean(dim=1)  # group mean of consecutive query heads
            keys = [stash[j][0] for j in sources] + [k]
            values = [stash[j][1] for j in sources] + [v]  # earlier values already mixed
            scores = torch.stack([(q_bar * kj).sum(-1) for kj in keys], -1) / math.sqrt(d)
            alpha = scores.softmax(dim=-1)  # (Hkv, T, |S|+1)
            v = sum(alpha[..., i:i + 1] * values[i] for i in range(len(values)))
        stash[layer] = (k, v)
        k_rep, v_rep = k.repeat_interleave(G, dim=0), v.repeat_interleave(G, dim=0)
        scores = (q @ k_rep.transpose(-1, -2)) / math.sqrt(d)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out = (attn @ v_rep).transpose(0, 1).reshape(T, H * d)
        x = x + out @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = F.silu(h @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def write_official(directory, config: dict, weights: dict):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(weights, directory / "model.safetensors")
    return directory


IDS = torch.randint(0, GEOMETRY["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("changes, depth", [
    ({}, True),
    ({"use_depth_attention": False}, False),  # their vanilla-with-qk-norm control
    ({"recurrent_model": False}, False),  # their master switch off: no depth mixing
])
def test_official_checkpoint_matches_float64_formula(tmp_path, changes, depth):
    weights = official_weights(seed=1)
    src = write_official(tmp_path / "official", official_config(**changes), weights)
    out = from_official(src, tmp_path / "ours")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.float64
    assert model.core_config.k_norm_position == "after_rope"
    assert model.core_config.method == ("depth_attention" if depth else "vanilla")
    if depth:
        assert model.core_config.method_options == {"stride": 2, "recent_window": 1,
                                                     "sources": "applications"}
    assert "lm_head_layernorm.weight" not in model.state_dict()
    with torch.no_grad():
        ours = model(IDS).logits
    expected = torch.stack([formula_logits(weights, row, depth) for row in IDS])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    # the test can tell the two k_norm placements apart (and mixing on from off)
    other = torch.stack([formula_logits(weights, row, depth, k_norm_after_rope=False)
                         for row in IDS])
    assert (other - expected).abs().max() > 1e-3
    if depth:
        plain = torch.stack([formula_logits(weights, row, False) for row in IDS])
        assert (plain - expected).abs().max() > 1e-3


def test_load_model_reads_the_authors_folder_as_it_is(tmp_path):
    """The one loader reads their format directly; convert writes the same model out."""
    weights = official_weights(seed=3)
    src = write_official(tmp_path / "official", official_config(), weights)
    assert folder_kind(src) == "official"
    model = load_model(src).eval()
    assert (model.config.method, model.config.k_norm_position) == ("depth_attention",
                                                                   "after_rope")
    with torch.no_grad():
        ours = model(IDS)
    expected = torch.stack([formula_logits(weights, row, True) for row in IDS])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    plain = load_model(src, method="vanilla").eval()  # their control, from the same weights
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS), torch.stack(
            [formula_logits(weights, row, False) for row in IDS]), rtol=0, atol=1e-10)


def test_converted_official_model_decodes_like_full_forward(tmp_path):
    weights = official_weights(seed=2)
    src = write_official(tmp_path / "official", official_config(), weights)
    model = AutoModelForCausalLM.from_pretrained(from_official(src, tmp_path / "ours")).eval()
    cache = KVCache.for_model(model.core(), batch_size=2, max_len=13)
    with torch.no_grad():
        full = model(IDS).logits
        steps = [model(IDS[:, :5], past_key_values=cache).logits]
        steps += [model(IDS[:, t:t + 1], past_key_values=cache).logits for t in range(5, 13)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
    # and generate (cached) == greedy over full forwards
    out = model.generate(IDS[:, :4], max_new_tokens=6)
    ids = IDS[:, :4]
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_missing_stride_uses_their_code_default(tmp_path):
    config = official_config()
    del config["depth_attention_stride"], config["depth_attention_recent_window"]
    src = write_official(tmp_path / "official", config, official_weights())
    model = AutoModelForCausalLM.from_pretrained(from_official(src, tmp_path / "ours"))
    assert model.core_config.method_options == {"stride": 1, "recent_window": 0, "sources": "applications"}


def test_unsupported_options_are_named(tmp_path):
    weights = official_weights()
    bad = write_official(tmp_path / "bad", official_config(
        attention_bias=True, use_qk_norm=False, hidden_act="gelu",
        rope_scaling={"rope_type": "linear", "factor": 2.0}), weights)
    with pytest.raises(ValueError) as error:
        from_official(bad, tmp_path / "out")
    for name in ("attention_bias", "use_qk_norm", "hidden_act", "rope_scaling"):
        assert name in str(error.value)
    baseline = write_official(tmp_path / "mhc", official_config(baseline_mode="mhc"), weights)
    with pytest.raises(ValueError, match="baseline_mode"):
        from_official(baseline, tmp_path / "out")
    qwen = write_official(tmp_path / "qwen", official_config(model_type="qwen3"), weights)
    with pytest.raises(ValueError, match="model_type 'llama'.*--from-qwen3"):
        from_official(qwen, tmp_path / "out")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        from_official(tmp_path / "empty", tmp_path / "out")
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps(official_config()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_official(only_config, tmp_path / "out")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        from_official(tmp_path / "junk", tmp_path / "out")
    wrong = write_official(tmp_path / "wrong", official_config(num_hidden_layers=4),
                           official_weights())
    with pytest.raises(ValueError, match="does not match"):
        from_official(wrong, tmp_path / "out")
