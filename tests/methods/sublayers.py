"""Driving a model's sublayers by hand, for tests that transcribe a method's equations."""

from __future__ import annotations

from collections.abc import Callable

import torch

from depthattn import CausalLM
from depthattn.methods.base import ForwardContext

Branch = Callable[[int, torch.Tensor], torch.Tensor]


def sublayer_runner(model: CausalLM, ids: torch.Tensor
                    ) -> tuple[torch.Tensor, Branch, Branch, Callable[[torch.Tensor], torch.Tensor]]:
    """h₀, the two pre-norm branches F_attn(l, u) and F_mlp(l, u) without their residual adds,
    and the head (final norm + lm_head)."""
    dec = model.model
    B, T = ids.shape
    cos, sin = dec.rotary_emb(dec.embed_tokens.weight, torch.arange(T).expand(B, T))
    ctx = ForwardContext(cos=cos, sin=sin, attn_mask=None, is_causal=True,
                         applications=dec.applications)

    def attn(layer: int, u: torch.Tensor) -> torch.Tensor:
        return dec.layers[layer].self_attn(dec.layers[layer].input_layernorm(u), dec.cross_layer,
                                           ctx)[0]

    def mlp(layer: int, u: torch.Tensor) -> torch.Tensor:
        return dec.layers[layer].mlp(dec.layers[layer].post_attention_layernorm(u))

    return dec.embed_tokens(ids), attn, mlp, lambda h: model.lm_head(dec.norm(h))


def block_runner(model: CausalLM, ids: torch.Tensor
                 ) -> tuple[torch.Tensor, Branch, Callable[[torch.Tensor], torch.Tensor]]:
    """h₀, the unmodified pre-norm block Y = Block(l, x), and the head."""
    h0, attn, mlp, head = sublayer_runner(model, ids)

    def block(layer: int, x: torch.Tensor) -> torch.Tensor:
        h = x + attn(layer, x)
        return h + mlp(layer, h)

    return h0, block, head


@torch.no_grad()
def assert_decoding_matches_full_forward(model: CausalLM, ids: torch.Tensor, prefill: int = 3,
                                         atol: float = 1e-12) -> None:
    """Prefill ``prefill`` tokens, then one token at a time: logits equal one full forward."""
    from depthattn import KVCache

    B, T = ids.shape
    full = model(ids)
    cache = KVCache.for_model(model, B, T)
    steps = [model(ids[:, :prefill], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                      for t in range(prefill, T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=atol, rtol=0)
