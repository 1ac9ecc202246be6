"""What a decoder and its cross-layer method cost per token: parameters, forward FLOPs, KV cache
and the depth state beyond it (paper appendix B; docs/method.md §8; docs/baselines.md §3 and §11).

Conventions (every number is per token of a forward pass):

- **Parameters**: every parameter of the vanilla decoder (tied embeddings counted once) plus
  the method's ``MethodCost.added_params``.
- **FLOPs**: a multiply-add is 2 FLOPs. Backbone = 2 × matmul parameters + attention.
  *Matmul parameters* are the weights of every projection, MLP and the LM head — not the
  embedding lookup (a gather) nor norm gains. *Attention* at sequence length T: every query
  head of every layer computes q·k and adds p·v for each key it sees, 2·d_h FLOPs each; under
  the causal mask token t (1-based) sees t keys, (T+1)/2 on average, so attention costs
  4·L·H·d_h·(T+1)/2 per token. The paper's appendix B compares Depth-Attention's extra
  arithmetic with "≈ 2·N FLOPs per token" and fixes no attention convention; we include the
  causal average and say so; a sliding-window layer's token sees at most W keys. Norms, RoPE,
  softmax and activations are not counted, here or in the methods' own counts.
  *Multi-head latent attention* (``attention="mla"``, docs/method.md §8 and §9): the
  projections are q_proj (or q_a_proj and q_b_proj), kv_a_proj_with_mqa, kv_b_proj and o_proj;
  kv_b_proj expands the latent of every token into its keys and values, once per token in a
  forward (a decoding step here re-expands the cached latents, which this per-token count
  does not charge). Attention scores d_nope + d_rope wide keys and mixes d_v wide values:
  2·L·H·(d_nope + d_rope + d_v)·(T+1)/2 per token, the GQA term with d_qk and d_v apart.
  ``MethodCost.added_matmul_flops_per_token`` is the part of a method's FLOPs computed as
  matrix products: with the backbone's matmuls and attention it is what a matmul FLOP counter
  sees (``tests/analysis/test_matmul_flops.py`` checks it against torch's ``FlopCounterMode``,
  which counts attention over all T keys).
- **KV cache**: the vanilla decoder's, ``ModelConfig.kv_cache_width`` per layer: 2·L·H_kv·d_h
  elements per token with GQA, L·(d_c + d_rope) with MLA; bytes at the chosen dtype. A method
  that makes the cache wider (Depth-Attention's MLA ``values`` rule keeps c̃ too, d_c per token
  and layer) reports the difference as persistent state beyond it.
- **State**: ``MethodCost.inflight_state_per_token`` is the depth state alive while a token
  traverses the stack (vanilla: its residual, d); ``persistent_state_per_token`` is what is
  kept across decoding steps beyond the KV cache. Both are reported next to the KV cache, and
  both are measured on a real model by ``analysis/measured_state.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from depthattn.methods import MethodCost, get_method, method_options, resolve_config
from depthattn.model.config import ModelConfig
from depthattn.model.looped import applications
from depthattn.utils.checks import require_positive_int
from depthattn.utils.errors import DepthAttnError

BYTES_PER_ELEMENT = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2,
                     "float16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class BackboneCost:
    """The vanilla decoder of a geometry, at one sequence length."""

    params: int  # every parameter (tied embeddings once)
    embedding_params: int  # the input embedding table
    matmul_params: int  # projections, MLPs and the LM head: the weights that cost FLOPs
    seq_len: int  # T, for the attention term
    # L below is L_eff, the applications, for a looped model (docs/method.md §7); params count L layers
    matmul_flops_per_token: float  # 2 × matmul_params (looped: each application's weights)
    attention_flops_per_token: float  # 4·L·H·d_h·(T+1)/2 (causal average; sliding: ≤ W keys)
    # elements: 2·L·H_kv·d_h (MLA: L·(d_c + d_rope)), one slot per application
    kv_cache_per_token: int
    residual_per_token: int  # d: the vanilla decoder's in-flight state
    # how kv_cache_per_token is made, e.g. "2·L·H_kv·d = 2·48·8·64" or "L·(d_c + d_rope) = ..."
    kv_cache_formula: str = ""

    @property
    def flops_per_token(self) -> float:
        return self.matmul_flops_per_token + self.attention_flops_per_token


@dataclass(frozen=True)
class CostReport:
    """Backbone and method cost of one configuration, with the derived totals and ratios."""

    label: str  # e.g. "3b / depth_attention"
    method: str
    options: dict[str, Any]  # the method's resolved options
    dtype: str  # for bytes (KV cache, state)
    bytes_per_element: int
    backbone: BackboneCost
    added: MethodCost

    @property
    def total_params(self) -> int:
        return self.backbone.params + self.added.added_params

    @property
    def total_flops_per_token(self) -> float:
        return self.backbone.flops_per_token + self.added.added_flops_per_token

    @property
    def added_flops_fraction(self) -> float:
        """Added FLOPs as a fraction of the total (multiply by 100 for %)."""
        return self.added.added_flops_per_token / self.total_flops_per_token

    @property
    def kv_cache_bytes_per_token(self) -> int:
        return self.backbone.kv_cache_per_token * self.bytes_per_element

    @property
    def inflight_vs_kv_cache(self) -> float:
        return self.added.inflight_state_per_token / self.backbone.kv_cache_per_token

    @property
    def persistent_vs_kv_cache(self) -> float:
        return self.added.persistent_state_per_token / self.backbone.kv_cache_per_token


def backbone_cost(config: ModelConfig, seq_len: int | None = None) -> BackboneCost:
    """Closed-form count for the vanilla decoder of ``config`` (tested against the module)."""
    T = config.max_seq_len if seq_len is None else seq_len
    require_positive_int("seq_len", T)
    L, D, V = config.num_layers, config.hidden_size, config.vocab_size
    # A looped model (docs/method.md §7) stores L distinct layers but runs, and caches, L_eff applications.
    L_eff = config.num_applications
    attention = attention_weights(config)  # q, k, v, o (MLA: its five projections)
    mlp = 3 * D * config.intermediate_size  # gate, up, down
    norms = 2 * D + attention_gains(config)  # two pre-norms, q_norm, k_norm (MLA: its own)
    embedding = V * D
    lm_head = V * D
    adapter = 2 * D * D if config.looped and config.loop_injection == "concat" else 0
    matmul = L * (attention + mlp) + lm_head + adapter  # distinct weights
    matmul_per_token = (L_eff * (attention + mlp) + lm_head
                        + adapter * config.loop_iterations)  # applied ones
    params = embedding + L * (attention + mlp + norms) + D + adapter + (
        0 if config.tie_embeddings else lm_head)
    keys = sum(mean_keys(T, config.layer_window(app.layer)) for app in applications(config))
    # keys head_dim wide (MLA: d_nope + d_rope), values head_dim (MLA: d_v)
    v_dim = config.v_head_dim if config.attention == "mla" else config.head_dim
    attn_flops = config.num_heads * 2 * (config.head_dim + v_dim) * keys  # q·k, p·v
    return BackboneCost(params=params, embedding_params=embedding, matmul_params=matmul,
                        seq_len=T, matmul_flops_per_token=float(2 * matmul_per_token),
                        attention_flops_per_token=float(attn_flops),
                        kv_cache_per_token=L_eff * vanilla_kv_cache_width(config),
                        residual_per_token=D, kv_cache_formula=kv_cache_formula(config))


def attention_weights(config: ModelConfig) -> int:
    """Weights of one layer's attention projections. GQA: q, k, v, o. MLA (docs/method.md §9):
    q_proj D → H·(d_nope + d_rope) (or q_a_proj D → d_q and q_b_proj d_q → H·(d_nope + d_rope)),
    kv_a_proj_with_mqa D → d_c + d_rope, kv_b_proj d_c → H·(d_nope + d_v), o_proj H·d_v → D."""
    D, H = config.hidden_size, config.num_heads
    if config.attention == "gqa":
        q_width, kv_width = H * config.head_dim, config.num_kv_heads * config.head_dim
        return D * q_width + 2 * D * kv_width + q_width * D
    d_c, d_rope, d_q = config.kv_lora_rank, config.qk_rope_head_dim, config.q_lora_rank
    q_width = H * config.head_dim  # head_dim = d_nope + d_rope
    queries = D * q_width if d_q is None else D * d_q + d_q * q_width
    return (queries + D * (d_c + d_rope) + d_c * H * (config.qk_nope_head_dim + config.v_head_dim)
            + H * config.v_head_dim * D)


def attention_gains(config: ModelConfig) -> int:
    """Norm gains inside one layer's attention: q_norm and k_norm (d each) with GQA;
    kv_a_layernorm (d_c) and, with a query rank, q_a_layernorm (d_q) with MLA."""
    if config.attention == "gqa":
        return 2 * config.head_dim
    return config.kv_lora_rank + (config.q_lora_rank or 0)


def kv_cache_formula(config: ModelConfig) -> str:
    """The vanilla KV cache per token as a formula with the geometry's numbers."""
    L = config.num_applications
    if config.attention == "gqa":
        return f"2·L·H_kv·d = 2·{L}·{config.num_kv_heads}·{config.head_dim}"
    return f"MLA: L·(d_c + d_rope) = {L}·({config.kv_lora_rank} + {config.qk_rope_head_dim})"


def vanilla_kv_cache_width(config: ModelConfig) -> int:
    """The vanilla decoder's KV cache per token and layer: ``kv_cache_width`` of the same
    geometry without the method (Depth-Attention's MLA ``values`` rule widens the cache by d_c;
    its ``cost()`` reports that as persistent state beyond this cache)."""
    return dataclasses.replace(config, method="vanilla", method_options={}).kv_cache_width


def mean_keys(seq_len: int, window: int | None) -> float:
    """Keys a token sees on average over a sequence of ``seq_len``: token t (1-based) sees t
    under the causal mask, (T + 1) / 2 on average; at most ``window`` in a sliding layer."""
    W = seq_len if window is None else min(window, seq_len)
    return (W * (W + 1) / 2 + (seq_len - W) * W) / seq_len


def method_cost(config: ModelConfig) -> MethodCost:
    """The registered method's closed-form ``cost()`` for ``config``'s geometry and options."""
    return get_method(config.method).cost(config, method_options(config))


def cost_report(config: ModelConfig, seq_len: int | None = None, dtype: str = "bf16",
                label: str | None = None) -> CostReport:
    if dtype not in BYTES_PER_ELEMENT:
        raise DepthAttnError(f"dtype ({dtype!r}) is unknown; allowed: {', '.join(BYTES_PER_ELEMENT)}")
    config = resolve_config(config)
    return CostReport(label=label or config.method, method=config.method,
                      options=dict(config.method_options), dtype=dtype,
                      bytes_per_element=BYTES_PER_ELEMENT[dtype],
                      backbone=backbone_cost(config, seq_len), added=method_cost(config))


def _short(n: float, sep: str = "") -> str:
    """1234567 → '1.23M' (``sep`` between number and suffix)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{sep}{suffix}"
    return f"{n:.3g}"


def _count(n: float) -> str:
    """1234567 → '1,234,567 (1.23 M)'."""
    return f"{n:,.0f}" + (f" ({_short(n, ' ')})" if abs(n) >= 1e3 else "")


def format_cost_report(report: CostReport) -> str:
    """One configuration, one quantity per line."""
    b, a = report.backbone, report.added
    kv_bytes = report.kv_cache_bytes_per_token
    options = ", ".join(f"{k}={v}" for k, v in report.options.items()) or "none"
    lines = [
        f"{report.label}  (method options: {options}; T = {b.seq_len}; {report.dtype})",
        f"  parameters          {_count(report.total_params)}",
        f"    added by method   {_count(a.added_params)}"
        f"  ({100 * a.added_params / report.total_params:.4g} % of total)",
        f"  FLOPs / token       {_count(report.total_flops_per_token)}"
        f"  (matmuls {_short(b.matmul_flops_per_token)}, attention "
        f"{_short(b.attention_flops_per_token)})",
        f"    added by method   {_count(a.added_flops_per_token)}"
        f"  ({100 * report.added_flops_fraction:.4g} % of total)",
        f"  KV cache / token    {b.kv_cache_per_token:,} elements = {kv_bytes:,} bytes"
        f"  ({b.kv_cache_formula})",
        f"  in-flight state     {a.inflight_state_per_token:,} elements"
        f" = {a.inflight_state_per_token * report.bytes_per_element:,} bytes"
        f"  ({report.inflight_vs_kv_cache:.2f}× the KV cache per token;"
        f" vanilla: d = {b.residual_per_token:,})",
        f"  persistent state    {a.persistent_state_per_token:,} elements beyond the KV cache"
        f"  ({report.persistent_vs_kv_cache:.2f}× the KV cache per token)",
    ]
    return "\n".join(lines)


COLUMNS = ("method", "params", "added params", "FLOPs/token", "added FLOPs", "added %",
           "KV/token", "in-flight", "÷KV", "persistent", "÷KV")


def format_cost_table(reports: list[CostReport]) -> str:
    """One row per configuration (elements for KV cache and state)."""
    rows = [COLUMNS]
    for r in reports:
        rows.append((r.label, _short(r.total_params), f"{r.added.added_params:,}",
                     _short(r.total_flops_per_token), _short(r.added.added_flops_per_token),
                     f"{100 * r.added_flops_fraction:.4g}", f"{r.backbone.kv_cache_per_token:,}",
                     f"{r.added.inflight_state_per_token:,}", f"{r.inflight_vs_kv_cache:.2f}",
                     f"{r.added.persistent_state_per_token:,}",
                     f"{r.persistent_vs_kv_cache:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


__all__ = ["BYTES_PER_ELEMENT", "BackboneCost", "CostReport", "backbone_cost", "cost_report",
           "format_cost_report", "format_cost_table", "kv_cache_formula", "method_cost",
           "vanilla_kv_cache_width"]
