"""The matmul-class FLOPs of the accounting, exactly, against torch's ``FlopCounterMode`` on one
real forward of a tiny model, for every registered method: backbone matmuls + attention + the
method's ``added_matmul_flops_per_token``.

How the counter is made to see what the accounting counts:

- Attention runs on SDPA's math backend, which computes q·kᵀ and p·v as batched matrix products
  the counter sees (CPU's fused kernel, ``_scaled_dot_product_flash_attention_for_cpu``, has no
  formula in it). Either way the count is the full T × T product: the causal mask saves nothing
  in it. The accounting's attention term takes the causal average, (T + 1)/2 keys per token, so
  the test compares with that term × T / ((T + 1)/2): every token against all T keys.
- The counter has no formula for ``aten.mv`` (matrix × vector); AttnRes's depth logits
  ⟨q ⊙ g, s⟩ run as one. The test adds it: 2·m·n for an (m, n) matrix.
- Depth-Attention's depth mix runs as the reference (einsums) or the inference mix (matmuls);
  the unstacked mix, "auto"'s choice for a prefill this long, does the same multiply-adds
  elementwise, where no matmul counter sees them.
- MLA models (docs/method.md §9) run the same variants but muddformer, which refuses them:
  kv_b_proj expands each token's latent once in a forward without a cache, and on MLA
  Depth-Attention adds the einsum of its depth query, u_l = (1/H) Σ_h W_UK,hᵀ q^N_h.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from depthattn.analysis.cost import cost_report
from depthattn.methods import method_names
from tests.conftest import TINY_MLA, random_ids, tiny_model

VARIANTS = [(method, {}) for method in method_names()] + [
    ("value_residual", {"mode": "gated"}),  # its gate is a projection
    ("depth_attention", {"stride": 1}),
    ("attnres", {"block_size": 4}),
    ("block_attnres", {"block_size": 8, "final_aggregator": False}),
    ("depth_attention+mhc", {}),
]
MLA_VARIANTS = [(method, options) for method, options in VARIANTS
                if method != "muddformer" and options.get("mode") != "gated"] + [
    ("depth_attention", {"mla_mix": "values"}),
    ("depth_attention", {"mla_mix": "values", "stride": 1}),
    ("value_residual", {"mode": "learned"}),
]


def mv_flops(matrix_shape, vector_shape, *args, out_shape=None, **kwargs) -> int:
    """aten.mv: (m, n) @ (n,) is m·n multiply-adds."""
    m, n = matrix_shape
    return 2 * m * n


def counted_flops_per_token(model, batch: int, seq_len: int) -> float:
    ids = random_ids(batch, seq_len)
    for module in model.modules():  # MLA: the accounting counts the expanded form (method.md §8)
        if hasattr(module, "absorbed"):
            module.absorbed = False
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mv: mv_flops})
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(ids)
    return counter.get_total_flops() / (batch * seq_len)


def variant_id(variant: tuple[str, dict]) -> str:
    method, options = variant
    return method + "".join(f"-{k}={v}" for k, v in options.items())


# every variant with the reference depth mix, Depth-Attention's with the inference mix too;
# on GQA and on MLA (TINY_MLA; MLA with a query rank has a test of its own)
GEOMETRIES = {"gqa": {}, "mla": TINY_MLA}
CASES = [(variant, "reference", geometry) for geometry, variants in
         (("gqa", VARIANTS), ("mla", MLA_VARIANTS)) for variant in variants] + [
    (variant, "inference", geometry) for geometry, variants in
    (("gqa", VARIANTS), ("mla", MLA_VARIANTS)) for variant in variants
    if "depth_attention" in variant[0]]


@pytest.mark.parametrize("variant, impl, geometry", CASES,
                         ids=[f"{g}-{variant_id(v)}-{impl}" for v, impl, g in CASES])
def test_matmul_flops_equal_the_accounting(variant, impl, geometry):
    method, options = variant
    model = tiny_model(method=method, method_options=options, **GEOMETRIES[geometry])
    model.set_depth_mix_impl(impl)
    T = 12
    report = cost_report(model.config, seq_len=T)
    backbone = report.backbone
    full_attention = backbone.attention_flops_per_token * T / ((T + 1) / 2)  # T keys, not (T+1)/2
    expected = (backbone.matmul_flops_per_token + full_attention
                + report.added.added_matmul_flops_per_token)
    assert counted_flops_per_token(model, 2, T) == pytest.approx(expected, rel=1e-12, abs=0)
    assert report.added.added_matmul_flops_per_token <= report.added.added_flops_per_token


def test_mla_with_a_query_rank():
    """q_a_proj and q_b_proj in place of q_proj, with Depth-Attention's latent rule."""
    model = tiny_model(method="depth_attention", q_lora_rank=24, **TINY_MLA)
    model.set_depth_mix_impl("reference")
    report = cost_report(model.config, seq_len=6)
    full_attention = report.backbone.attention_flops_per_token * 6 / 3.5
    assert counted_flops_per_token(model, 1, 6) == (report.backbone.matmul_flops_per_token
                                                    + full_attention
                                                    + report.added.added_matmul_flops_per_token)


def test_the_vanilla_count_is_the_backbone_alone():
    """The attention conversion by hand: 4·d_h FLOPs per key, head and layer, T keys."""
    model = tiny_model()
    backbone = cost_report(model.config, seq_len=5).backbone
    attention = 4 * 16 * 4 * 6 * 5  # d_h, H, L, T
    assert counted_flops_per_token(model, 1, 5) == backbone.matmul_flops_per_token + attention
