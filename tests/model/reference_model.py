"""An independent, plain float64 transcription of the whole model from docs/method.md (§1–§3).

Written from the equations, not from depthattn's modules: it reads only the model's
``config`` fields and its state-dict tensors (Qwen3 names), loops over layers and depth
sources, and spells out RMSNorm, RoPE (rotate-half, as Qwen3), GQA, causal softmax attention,
the depth mix with recursive mixed values, SwiGLU, the final norm and the LM head.

Tests import it as a module of the ``tests`` package:
``from tests.model.reference_model import reference_forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def sources_of(layer: int, stride: int, window: int) -> list[int]:
    """docs/method.md §2, brute force."""
    return [j for j in range(layer) if j % stride == 0 or j >= layer - window]


# RoPE precision is not part of the method, and implementations differ: transformers computes
# the frequency table in float32; the angles may then be formed in float32 (Qwen3) or, once a
# model is cast to float64, from that float32 table in float64. The reference tries each.
ROPE_PRECISIONS = [
    (torch.float32, torch.float32),  # (frequency table dtype, angle dtype)
    (torch.float32, torch.float64),
    (torch.float64, torch.float64),
]


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float,
                angle_dtype: torch.dtype, freq_dtype: torch.dtype | None = None):
    """cos, sin of shape (B, T, d) in float64; inv_freq = θ^(−2i/d) is computed in
    ``freq_dtype`` (default: ``angle_dtype``), the angles position · inv_freq in ``angle_dtype``."""
    freq_dtype = freq_dtype or angle_dtype
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(freq_dtype) / head_dim
    inv_freq = (1.0 / (theta ** exponents)).to(angle_dtype)  # (d/2,)
    freqs = positions[..., None].to(angle_dtype) * inv_freq  # (B, T, d/2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (B, T, d): rotate-half pairs i and i + d/2
    return angles.cos().double(), angles.sin().double()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, d): x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * gain


@dataclass
class ReferenceOutput:
    logits: torch.Tensor  # (B, T, V)
    keys: list = field(default_factory=list)  # per layer (B, H_kv, T, d), as attention uses them
    values: list = field(default_factory=list)  # per layer (B, H_kv, T, d), mixed ṽ_l
    alphas: dict = field(default_factory=dict)  # layer -> (B, H_kv, T, |S(l)|+1), self last
    sources: dict = field(default_factory=dict)  # layer -> S(l)


def reference_forward(config, params: dict, input_ids: torch.Tensor,
                      angle_dtype: torch.dtype = torch.float32,
                      positions: torch.Tensor | None = None,
                      freq_dtype: torch.dtype | None = None) -> ReferenceOutput:
    """Full forward of the model described by ``config`` with weights ``params`` (a state
    dict with Qwen3 names; tensors used as given, so they may require grad)."""
    L = config.num_layers
    H, H_kv = config.num_heads, config.num_kv_heads
    G = H // H_kv
    d = config.head_dim or config.hidden_size // H
    eps = config.rms_norm_eps
    depth = config.method == "depth_attention"
    if depth:
        stride = config.method_options["stride"]
        window = config.method_options.get("recent_window", 0)
    after_rope = config.k_norm_position == "after_rope"

    p = {name: t.double() for name, t in params.items()}
    B, T = input_ids.shape
    if positions is None:
        positions = torch.arange(T).expand(B, T)
    cos, sin = rope_tables(positions, d, config.rope_theta, angle_dtype, freq_dtype)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))  # query t sees keys s ≤ t

    out = ReferenceOutput(logits=None)
    x = p["model.embed_tokens.weight"][input_ids]  # (B, T, D)
    for layer in range(L):
        pre = f"model.layers.{layer}."
        # --- h = x + Attn(RMSNorm(x)) ---
        a = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = (a @ p[pre + "self_attn.q_proj.weight"].T).view(B, T, H, d)
        k = (a @ p[pre + "self_attn.k_proj.weight"].T).view(B, T, H_kv, d)
        v = (a @ p[pre + "self_attn.v_proj.weight"].T).view(B, T, H_kv, d)
        q = rope(rms_norm(q, p[pre + "self_attn.q_norm.weight"], eps), cos, sin)
        if after_rope:
            k = rms_norm(rope(k, cos, sin), p[pre + "self_attn.k_norm.weight"], eps)
        else:
            k = rope(rms_norm(k, p[pre + "self_attn.k_norm.weight"], eps), cos, sin)

        # --- depth mix (docs/method.md §3): per token and kv head, over S(l) and the layer itself ---
        if depth and layer > 0:
            src = sources_of(layer, stride, window)
            out.sources[layer] = src
            mixed_heads, alpha_heads = [], []
            for g in range(H_kv):
                q_bar = q[:, :, g * G:(g + 1) * G, :].mean(dim=2)  # (B, T, d)
                cand_k = [out.keys[j][:, g] for j in src] + [k[:, :, g]]  # each (B, T, d)
                cand_v = [out.values[j][:, g] for j in src] + [v[:, :, g]]
                scores = torch.stack([(q_bar * kk).sum(-1) / math.sqrt(d) for kk in cand_k], -1)
                alpha = torch.softmax(scores, dim=-1)  # (B, T, n+1)
                mixed = sum(alpha[..., i:i + 1] * vv for i, vv in enumerate(cand_v))
                mixed_heads.append(mixed)
                alpha_heads.append(alpha)
            v = torch.stack(mixed_heads, dim=2)  # (B, T, H_kv, d)
            out.alphas[layer] = torch.stack(alpha_heads, dim=1)  # (B, H_kv, T, n+1)
        out.keys.append(k.transpose(1, 2))  # (B, H_kv, T, d)
        out.values.append(v.transpose(1, 2))

        # --- causal GQA attention: query head h reads kv head h // G ---
        heads = []
        for h in range(H):
            kh, vh = k[:, :, h // G], v[:, :, h // G]  # (B, T, d)
            scores = q[:, :, h] @ kh.transpose(1, 2) / math.sqrt(d)  # (B, T, T)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ vh)  # (B, T, d)
        attn = torch.cat(heads, dim=-1) @ p[pre + "self_attn.o_proj.weight"].T
        x = x + attn

        # --- x' = h + MLP(RMSNorm(h)), SwiGLU ---
        m = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        gate = m @ p[pre + "mlp.gate_proj.weight"].T
        up = m @ p[pre + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ p[pre + "mlp.down_proj.weight"].T

    x = rms_norm(x, p["model.norm.weight"], eps)
    out.logits = x @ p["lm_head.weight"].T
    return out


def closest_reference(config, params, input_ids, logits: torch.Tensor,
                      positions: torch.Tensor | None = None) -> ReferenceOutput:
    """The reference under whichever RoPE precision (``ROPE_PRECISIONS``) is closest to
    ``logits``. The precisions differ by ~1e-8 in the logits, the method's effects by > 1e-3."""
    return min(_candidates(config, params, input_ids, positions),
               key=lambda r: (r.logits - logits.detach().double()).abs().max().item())


def _candidates(config, params, input_ids, positions):
    for freq_dtype, angle_dtype in ROPE_PRECISIONS:
        yield reference_forward(config, params, input_ids, angle_dtype=angle_dtype,
                                positions=positions, freq_dtype=freq_dtype)


def closest_precision(config, params, input_ids, logits: torch.Tensor):
    """(freq_dtype, angle_dtype) of the closest reference, to rerun it with grad-tracked params."""
    errors = []
    for freq_dtype, angle_dtype in ROPE_PRECISIONS:
        with torch.no_grad():
            ref = reference_forward(config, params, input_ids, angle_dtype=angle_dtype,
                                    freq_dtype=freq_dtype)
        errors.append(((ref.logits - logits.detach().double()).abs().max().item(),
                       (freq_dtype, angle_dtype)))
    return min(errors, key=lambda e: e[0])[1]
