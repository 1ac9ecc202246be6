"""Depth-Attention (Zeng et al., 2026, arXiv 2606.05014): before layer l attends over the
sequence, its query attends over depth — the keys of selected earlier layers at the same
token — and mixes their values into the value that self-attention reads and the cache stores.
No parameters; the only state is the vanilla-sized KV cache (docs/method.md §2–§4).

A looped model (docs/method.md §7) mixes over applications: layer indices below are application indices
e = 0 .. L_eff − 1, each with its own key and mixed value in the depth stash and the cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from depthattn.methods.base import (
    CrossLayerMethod,
    ForwardContext,
    KeyValue,
    MethodCost,
    MethodOptions,
)
from depthattn.methods.registry import register
from depthattn.model.config import ModelConfig
from depthattn.model.looped import Application, applications
from depthattn.ops.depth_mix import check_impl, depth_mix, depth_mix_reference
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

# (layer l, its sources S(l), α of shape (B, H_kv, T, |S(l)| + 1)) -> None
DepthWeightRecorder = Callable[[int, list[int], torch.Tensor], None]


# How a looped model's applications choose their sources (docs/method.md §7).
SOURCE_RULES = ("applications", "recurrent")
# What the mix reaches on a latent (MLA) cache (docs/method.md §9): the whole entry, which keys
# and values share, or the values only (the cache then also keeps c̃).
MLA_MIXES = ("latent", "values")


def depth_sources(layer: int, stride: int, recent_window: int) -> list[int]:
    """S(l) = { j : 0 ≤ j < l and (j mod s == 0 or j ≥ l − w) }, ascending (docs/method.md §2)."""
    return [j for j in range(layer) if j % stride == 0 or j >= layer - recent_window]


def application_sources(apps: Sequence[Application], stride: int, recent_window: int,
                        rule: str = "applications") -> list[list[int]]:
    """S(e) for every application e of a schedule (docs/method.md §7), ascending.

    ``applications``: §2's rule over application indices. ``recurrent``: the application of
    looped layer i at iteration t ≥ 1 reads application 0 and layer i's applications at
    iterations 0 .. t − 1 (the depth-recurrent view); every other one keeps ``applications``.
    Not looped: S(l) of §2, since applications are then the layers."""
    sources = [depth_sources(app.index, stride, recent_window) for app in apps]
    if rule == "recurrent":
        for app in apps:
            if app.iteration:  # t ≥ 1
                earlier = [b.index for b in apps if b.layer == app.layer
                           and b.iteration is not None and b.iteration < app.iteration]
                sources[app.index] = sorted({0, *earlier})
    return sources


@dataclass(frozen=True)
class DepthAttentionOptions(MethodOptions):
    stride: int | None = None  # s: every s-th earlier application is a source; None → L_eff // 2
    recent_window: int = 0  # w: the w applications just below e are sources too
    sources: str = "applications"  # a looped model's source rule: applications or recurrent
    mla_mix: str | None = None  # MLA models: "latent" (the default there) or "values"

    def resolved(self, config: ModelConfig) -> DepthAttentionOptions:
        # L_eff = num_layers when not looped. Kept as resolved when r changes later (test-time
        # depth), so that the trained model's stride stays.
        stride = max(1, config.num_applications // 2) if self.stride is None else self.stride
        require_int("depth_attention option stride", stride, 1,
                    hint=" (1 = every earlier layer is a source)")
        require_int("depth_attention option recent_window", self.recent_window, 0)
        if self.sources not in SOURCE_RULES:
            raise DepthAttnError(f"depth_attention option sources ({self.sources!r}) must be one "
                                 f"of {', '.join(SOURCE_RULES)}")
        if self.sources == "recurrent" and not config.looped:
            # without a looped block there are no iterations to read: it would be `applications`
            raise DepthAttnError("depth_attention option sources 'recurrent' needs a looped model "
                                 "(loop_layers > 0); without one every layer uses 'applications'")
        mla_mix = self.mla_mix
        if config.attention != "mla":
            if mla_mix is not None:
                raise DepthAttnError(f"depth_attention option mla_mix ({mla_mix!r}) applies to "
                                     f"multi-head latent attention (attention='mla'); this "
                                     f"model's attention is {config.attention!r}")
        elif mla_mix is None:
            mla_mix = "latent"
        elif mla_mix not in MLA_MIXES:
            raise DepthAttnError(f"depth_attention option mla_mix ({mla_mix!r}) must be one of "
                                 f"{', '.join(MLA_MIXES)}")
        return dataclasses.replace(self, stride=stride, mla_mix=mla_mix)

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        if out["mla_mix"] is None:  # GQA models: configs stay as they were before MLA
            del out["mla_mix"]
        return out


@register("depth_attention", options=DepthAttentionOptions)
class DepthAttention(CrossLayerMethod):
    reads_context_activations = True  # the depth stash

    def __init__(self, config: ModelConfig, options: DepthAttentionOptions) -> None:
        super().__init__(config, options)
        # The schedule's length (L_eff) → S(e) for e = 0 .. L_eff − 1, and the applications
        # some later one reads (only they go into the stash: its memory stays at |∪ S(e)|).
        # A looped model's depth may change from call to call; the weights and options do not.
        self._plans: dict[int, tuple[list[list[int]], frozenset[int]]] = {}
        # S(e) and the stashed applications of the schedule the model was built with
        self.sources, self.read_later = self.plan(applications(config))
        # Set only while depthattn.analysis.capture_depth_weights is active: α is then computed
        # by the reference mix, which returns it, and handed to the recorder.
        self.recorder: DepthWeightRecorder | None = None
        self.impl = "auto"  # which depth mix runs (ops/depth_mix); a runtime choice, not saved
        self.kv_lora_rank = config.kv_lora_rank  # d_c of an MLA model's entries, else None

    @property
    def impl(self) -> str:
        """The depth-mix implementation: "auto" (its documented rule) or one by name
        (``depthattn.ops.depth_mix.IMPLS``); ``CausalLM.set_depth_mix_impl`` sets it."""
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        check_impl(impl)
        self._impl = impl

    @classmethod
    def cost(cls, config: ModelConfig, options: DepthAttentionOptions) -> MethodCost:
        """docs/method.md §8 / paper appendix B: per mixing layer, (|S(l)|+1) scores and weighted values of
        H_kv·d each (2 FLOPs per multiply-add), plus H·d for the group means and the softmax.
        Matmul-class: the scores and the weighted values, two batched matrix products in the
        reference and inference mixes (the unstacked mix does the same multiply-adds
        elementwise); the group means and the softmax are not. No parameters; the stash holds
        the in-flight token's own KV-cache entries (k_j, ṽ_j), so the in-flight state beyond
        the KV cache is the residual, d. MLA models: ``latent_cost``."""
        all_sources = application_sources(applications(config), options.stride,
                                          options.recent_window, options.sources)
        if config.attention == "mla":
            return cls.latent_cost(config, options, all_sources)
        H_kv_d = config.num_kv_heads * config.head_dim
        flops = matmul = 0
        for sources in all_sources:
            n = len(sources)
            if n:
                matmul += (n + 1) * (2 * H_kv_d + 2 * H_kv_d)
                flops += (n + 1) * (2 * H_kv_d + 2 * H_kv_d) + config.num_heads * config.head_dim
        return MethodCost(added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(matmul),
                          inflight_state_per_token=config.hidden_size)

    @staticmethod
    def latent_cost(config: ModelConfig, options: DepthAttentionOptions,
                    all_sources: list[list[int]]) -> MethodCost:
        """docs/method.md §8 and §9, on entries e = [c ; k^R] of width W = d_c + d_rope. Per
        mixing layer: the depth query's u_l = (1/H) Σ_h W_UK,hᵀ q^N_h, H·d_nope·d_c
        multiply-adds (one einsum: matmul-class), and r̄_l, H·d_rope adds; then (|S(l)|+1)·W
        multiply-adds for the scores and as many for the mix, matmul-class as in the GQA count
        (§3's mix with one head of width W). No parameters.

        State. ``latent``: the stash holds the entries ẽ_j the cache holds, so in flight there is
        the residual, d, as with GQA; the cache is vanilla MLA's. ``values``: the cache also
        keeps c̃_l, d_c per token and layer beyond vanilla MLA's (persistent state); and the
        stash's ẽ_j = (c̃_j, k̃^R_j) has a mixed rotary key k̃^R_j that no cache slot holds (the
        key slot keeps the layer's own k^R_j): d_rope per stashed application that mixed,
        in flight beside the residual."""
        W = config.kv_lora_rank + config.qk_rope_head_dim
        H = config.num_heads
        query = 2 * H * config.qk_nope_head_dim * config.kv_lora_rank  # u_l
        flops = matmul = 0
        for sources in all_sources:
            n = len(sources)
            if n:
                mix = (n + 1) * (2 * W + 2 * W)  # scores, mix
                matmul += query + mix
                flops += query + mix + H * config.qk_rope_head_dim  # + r̄_l
        inflight, persistent = config.hidden_size, 0
        if options.mla_mix == "values":
            read_later = {j for sources in all_sources for j in sources}
            inflight += config.qk_rope_head_dim * sum(1 for j in read_later if all_sources[j])
            persistent = config.num_applications * config.kv_lora_rank
        return MethodCost(added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(matmul),
                          inflight_state_per_token=inflight,
                          persistent_state_per_token=persistent)

    def plan(self, apps: Sequence[Application]) -> tuple[list[list[int]], frozenset[int]]:
        """S(e) of every application of a schedule, and the applications read later."""
        if torch.compiler.is_compiling():
            # traced into constants, once per graph: a lookup in the cache would add a guard
            # on its contents, and a recompile after its first fill
            return self._plan(apps)
        plan = self._plans.get(len(apps))
        if plan is None:
            plan = self._plans[len(apps)] = self._plan(apps)
        return plan

    def _plan(self, apps: Sequence[Application]) -> tuple[list[list[int]], frozenset[int]]:
        o = self.options
        sources = application_sources(apps, o.stride, o.recent_window, o.sources)
        return sources, frozenset(j for s in sources for j in s)

    def mix_values(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        all_sources, read_later = self.plan(ctx.applications)
        sources = all_sources[layer_idx]
        if sources:  # layer 0 has none: its value is unchanged
            keys = [ctx.depth_stash[j].key for j in sources]
            values = [ctx.depth_stash[j].value for j in sources]  # mixed values ṽ_j: recursive
            if self.recorder is None:
                v = depth_mix(q, keys, values, k, v, self.impl)  # docs/method.md §3
            else:
                v, alpha = depth_mix_reference(q, keys, values, k, v, return_weights=True)
                self.recorder(layer_idx, sources, alpha)
        if layer_idx in read_later:
            ctx.depth_stash[layer_idx] = KeyValue(k, v)
        return v

    def mix_entries(self, layer_idx: int, depth_query: Callable[[], torch.Tensor],
                    entry: torch.Tensor, ctx: ForwardContext
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """docs/method.md §9: ẽ_l = Σ_j α_j ẽ_j + α_l e_l over the entries [c ; k^R] at the same
        token, α the softmax of this layer's mean attention logit for each. It is §3's mix with
        one head whose key and value are the entry, so ``depth_mix`` computes it."""
        all_sources, read_later = self.plan(ctx.applications)
        sources = all_sources[layer_idx]
        mixed = entry
        if sources:  # layer 0 has none: its entry is unchanged
            query = depth_query()
            stash = [ctx.depth_stash[j].value for j in sources]  # mixed entries ẽ_j
            if self.recorder is None:
                mixed = depth_mix(query, stash, stash, entry, entry, self.impl)
            else:
                mixed, alpha = depth_mix_reference(query, stash, stash, entry, entry,
                                                   return_weights=True)
                self.recorder(layer_idx, sources, alpha)
        if layer_idx in read_later:
            ctx.depth_stash[layer_idx] = KeyValue(mixed, mixed)
        if self.options.mla_mix == "values":  # keys stay the layer's own; values read c̃
            return entry, mixed[..., :self.kv_lora_rank]
        return mixed, None


def set_depth_mix_impl(module: torch.nn.Module, impl: str) -> None:
    """Set ``impl`` on every Depth-Attention method inside ``module`` (none: nothing to set)."""
    check_impl(impl)
    for m in module.modules():
        if isinstance(m, DepthAttention):
            m.impl = impl
