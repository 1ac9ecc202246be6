"""The depth mix as one Triton kernel forward and one backward (CUDA; CPU under TRITON_INTERPRET=1).

Never chosen by ``impl="auto"``: a model runs it after ``set_depth_mix_impl("triton")``. It is
checked against the float64 reference by tests/ops/depth_mix/test_triton_kernel.py, on a GPU by
the ``gpu`` tests that benchmarks/gpu_check.sh runs.

One program owns a block of tokens of one (batch, kv head). Forward reads the G query heads of
the group once, then each key and value of the n+1 sources once, straight from the tensors
where they live (a tuple of pointers, no stacked copy), and keeps an online softmax over depth
in float32 registers. It writes ṽ_l and one log-sum-exp per token. Backward recomputes the
weights α_j = exp(a_j − lse) from that log-sum-exp, per token and kv head, with o = ṽ_l and
do = ∂L/∂o (the derivatives of docs/method.md §3, steps 2–4):

    ∂L/∂ṽ_j = α_j · do                            (v_l for the layer itself)
    ∂L/∂α_j = do · ṽ_j
    ∂L/∂a_j = α_j (∂L/∂α_j − Σ_i α_i ∂L/∂α_i)     (softmax)
    ∂L/∂k_j = ∂L/∂a_j · q̄ / √d,    ∂L/∂q̄ = Σ_j ∂L/∂a_j · k_j / √d
    ∂L/∂q_h = ∂L/∂q̄ / G for each of the G query heads of the group (the group mean)

in two passes over the sources: the first sums Σ_i α_i ∂L/∂α_i in float32, the second writes
every gradient.

Unlike FlashAttention's backward, that sum is not taken as do · ṽ_l: ṽ_l is stored in the value
dtype, and in bfloat16 do · (rounding error of ṽ_l) is as large as ∂L/∂α_j − Σ_i α_i ∂L/∂α_i
itself when the softmax is sharp: taken that way, the key and query gradients are off by up to
655× the tests' bfloat16 tolerance (tests/ops/depth_mix/compare.py; with round-to-nearest, the
GPU's rounding, still 46% of their largest value). The first pass costs one more read of the n+1
keys and values in backward.

Sources must share one memory layout for keys and one for values; the model's do (every layer
makes k and v the same way), and a source that differs is copied to the common layout.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from depthattn.utils.errors import DepthAttnError

_ELEMENTS_PER_PROGRAM = 2048  # tokens × head dim per program: q̄, acc, k_j, v_j stay in registers


@triton.jit
def _tile(q_ptr, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, T, H_KV,
          HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr,
          BLOCK_D: tl.constexpr):
    """This program's block of tokens of one (batch, kv head): its row in the log-sum-exp,
    token indices, mask, offsets into q (first head of the group), keys and values, and the
    group-mean query q̄ in float32."""
    bg = tl.program_id(1)
    b = (bg // H_KV).to(tl.int64)
    g = bg % H_KV
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    mask = (t[:, None] < T) & (d[None, :] < HEAD_DIM)
    q_offset = b * sq_b + (g * GROUP) * sq_h + t[:, None] * sq_t + d[None, :]
    q_bar = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(GROUP):  # the G query heads that share kv head g
        q_bar += tl.load(q_ptr + q_offset + i * sq_h, mask=mask, other=0.0).to(tl.float32)
    k_offset = b * sk_b + g * sk_h + t[:, None] * sk_t + d[None, :]
    v_offset = b * sv_b + g * sv_h + t[:, None] * sv_t + d[None, :]
    return bg.to(tl.int64), t, mask, q_offset, q_bar / GROUP, k_offset, v_offset


@triton.jit
def _forward_kernel(q_ptr, keys, values, out_ptr, lse_ptr,
                    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                    T, H_KV, scale,
                    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, NUM_SOURCES: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    bg, t, mask, _, q_bar, k_offset, v_offset = _tile(
        q_ptr, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, T, H_KV,
        HEAD_DIM, GROUP, BLOCK_T, BLOCK_D)
    q_bar = q_bar * scale
    running_max = tl.full([BLOCK_T], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_T], dtype=tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(NUM_SOURCES + 1):  # sources in order, the layer itself last
        k = tl.load(keys[j] + k_offset, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(values[j] + v_offset, mask=mask, other=0.0).to(tl.float32)
        score = tl.sum(q_bar * k, axis=1)
        new_max = tl.maximum(running_max, score)
        rescale = tl.exp(running_max - new_max)
        weight = tl.exp(score - new_max)
        running_sum = running_sum * rescale + weight
        acc = acc * rescale[:, None] + weight[:, None] * v
        running_max = new_max
    out = acc / running_sum[:, None]
    tl.store(out_ptr + v_offset, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + bg * T + t, running_max + tl.log(running_sum), mask=t < T)


@triton.jit
def _backward_kernel(q_ptr, keys, values, grad_out_ptr, lse_ptr,
                     grad_q_ptr, grad_keys, grad_values,
                     sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                     T, H_KV, scale,
                     HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, NUM_SOURCES: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    bg, t, mask, q_offset, q_bar, k_offset, v_offset = _tile(
        q_ptr, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, T, H_KV,
        HEAD_DIM, GROUP, BLOCK_T, BLOCK_D)
    lse = tl.load(lse_ptr + bg * T + t, mask=t < T, other=0.0)
    grad_out = tl.load(grad_out_ptr + v_offset, mask=mask, other=0.0).to(tl.float32)
    weighted = tl.zeros([BLOCK_T], dtype=tl.float32)  # Σ_i α_i ∂L/∂α_i, in float32
    for j in tl.static_range(NUM_SOURCES + 1):
        k = tl.load(keys[j] + k_offset, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(values[j] + v_offset, mask=mask, other=0.0).to(tl.float32)
        alpha = tl.exp(tl.sum(q_bar * k, axis=1) * scale - lse)
        weighted += alpha * tl.sum(grad_out * v, axis=1)
    grad_q_bar = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(NUM_SOURCES + 1):
        k = tl.load(keys[j] + k_offset, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(values[j] + v_offset, mask=mask, other=0.0).to(tl.float32)
        alpha = tl.exp(tl.sum(q_bar * k, axis=1) * scale - lse)
        grad_score = alpha * (tl.sum(grad_out * v, axis=1) - weighted) * scale
        tl.store(grad_values[j] + v_offset,
                 (alpha[:, None] * grad_out).to(grad_values[j].dtype.element_ty), mask=mask)
        tl.store(grad_keys[j] + k_offset,
                 (grad_score[:, None] * q_bar).to(grad_keys[j].dtype.element_ty), mask=mask)
        grad_q_bar += grad_score[:, None] * k
    grad_q = (grad_q_bar / GROUP).to(grad_q_ptr.dtype.element_ty)
    for i in tl.static_range(GROUP):
        tl.store(grad_q_ptr + q_offset + i * sq_h, grad_q, mask=mask)


def _common_layout(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Make every tensor share the strides of the last one (the layer's own k or v)."""
    target = tensors[-1]
    if all(t.stride() == target.stride() for t in tensors):
        return tensors
    # empty_like keeps the target's layout for dense tensors
    return tuple(t if t.stride() == target.stride() else torch.empty_like(target).copy_(t)
                 for t in tensors)


def _launch_shape(T: int, d: int, B: int, H_kv: int) -> tuple[int, int, tuple[int, int]]:
    block_d = triton.next_power_of_2(d)
    block_t = max(1, min(triton.next_power_of_2(T), _ELEMENTS_PER_PROGRAM // block_d))
    return block_t, block_d, (triton.cdiv(T, block_t), B * H_kv)


class _DepthMixTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, num_sources: int, *kv: torch.Tensor) -> torch.Tensor:
        keys = _common_layout(kv[:num_sources + 1])
        values = _common_layout(kv[num_sources + 1:])
        B, H, T, d = q.shape
        H_kv = keys[-1].shape[1]
        out = torch.empty_like(values[-1])
        lse = torch.empty(B, H_kv, T, device=q.device, dtype=torch.float32)
        block_t, block_d, grid = _launch_shape(T, d, B, H_kv)
        scale = 1.0 / math.sqrt(d)
        _forward_kernel[grid](q, keys, values, out, lse,
                              *q.stride()[:3], *keys[-1].stride()[:3], *values[-1].stride()[:3],
                              T, H_kv, scale, HEAD_DIM=d, GROUP=H // H_kv,
                              NUM_SOURCES=num_sources, BLOCK_T=block_t, BLOCK_D=block_d)
        ctx.num_sources, ctx.scale = num_sources, scale
        ctx.save_for_backward(q, lse, *keys, *values)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, lse, *kv = ctx.saved_tensors
        n1 = ctx.num_sources + 1
        keys, values = tuple(kv[:n1]), tuple(kv[n1:])
        if grad_out.stride() != values[-1].stride():  # the kernel reads do at ṽ_l's offsets
            grad_out = torch.empty_like(values[-1]).copy_(grad_out)
        B, H, T, d = q.shape
        H_kv = keys[-1].shape[1]
        grad_q = torch.empty_like(q)
        grad_keys = tuple(torch.empty_like(k) for k in keys)
        grad_values = tuple(torch.empty_like(v) for v in values)
        block_t, block_d, grid = _launch_shape(T, d, B, H_kv)
        _backward_kernel[grid](q, keys, values, grad_out, lse, grad_q, grad_keys, grad_values,
                               *q.stride()[:3], *keys[-1].stride()[:3], *values[-1].stride()[:3],
                               T, H_kv, ctx.scale, HEAD_DIM=d, GROUP=H // H_kv,
                               NUM_SOURCES=ctx.num_sources, BLOCK_T=block_t, BLOCK_D=block_d)
        return grad_q, None, *grad_keys, *grad_values


def depth_mix_triton(q: torch.Tensor, source_keys: list[torch.Tensor],
                     source_values: list[torch.Tensor], key: torch.Tensor,
                     value: torch.Tensor) -> torch.Tensor:
    """ṽ_l (B, H_kv, T, d); shapes as in ``depth_mix_reference``. The last dimension of every
    tensor must be contiguous (stride 1), as the model's projections make it."""
    tensors = [q, *source_keys, key, *source_values, value]
    if any(t.stride(-1) != 1 for t in tensors):
        raise DepthAttnError("depth_mix_triton needs unit stride in the head dimension; got strides "
                             f"{[t.stride() for t in tensors]}")
    if len({t.device for t in tensors}) != 1:
        raise DepthAttnError(f"depth_mix_triton needs every tensor on one device; got "
                             f"{sorted({str(t.device) for t in tensors})}")
    # Each output and gradient is written at its input's offsets into an ``empty_like`` buffer,
    # which has the input's strides only when the input is dense: a tensor with gaps (a slice of
    # a wider one) would be written past the buffer's end, so it is copied first.
    q, *kv = [t if _dense(t) else t.contiguous() for t in tensors]
    return _DepthMixTriton.apply(q, len(source_keys), *kv)


def _dense(t: torch.Tensor) -> bool:
    """Contiguous, or a transposed view of a contiguous (B, T, heads, d): what the model makes."""
    return t.is_contiguous() or t.transpose(1, 2).is_contiguous()
