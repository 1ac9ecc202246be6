"""The decoder (Qwen3Model's shape) and the causal LM head on top (Qwen3ForCausalLM's)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from depthattn.config import ModelConfig
from depthattn.crosslayer import build_method
from depthattn.crosslayer.base import ForwardContext
from depthattn.looped import LoopInjection, applications
from depthattn.model.block import Block
from depthattn.model.cache import DecoderCache
from depthattn.model.mask import attention_mask_for
from depthattn.model.rope import RotaryEmbedding
from depthattn.ops.chunked_cross_entropy import (
    DEFAULT_CHUNK_SIZE,
    chunked_cross_entropy,
)
from depthattn.ops.norm import RMSNorm
from depthattn.utils.checks import require_int


class Decoder(nn.Module):
    """embed → N blocks → final RMSNorm. Parameter names are Qwen3's.

    A looped config (spec §7, ``depthattn.looped``) applies its blocks in the order prelude,
    looped block × r, coda; application e runs block ``applications[e].layer`` under index e.

    ``forward(input_ids, attention_mask, cache, position_ids)`` validates its inputs before any
    work and returns the (B, T, D) hidden states; see ``CausalLM`` for the arguments.
    """

    # Non-reentrant: Depth-Attention's sources reach later blocks through the call's depth stash,
    # not through the block's arguments, and reentrant checkpointing would drop their gradients.
    checkpoint_function: Callable = staticmethod(functools.partial(checkpoint, use_reentrant=False))

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.applications = applications(config)  # the order the blocks run, e = 0 .. L_eff − 1
        # Input injection of a looped model; `model.loop_injection.weight` for concat only.
        self.loop_injection = LoopInjection(config) if config.looped else None
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        # Methods with parameters keep them here, under `model.cross_layer.*`.
        self.cross_layer = build_method(config)
        # Recompute each block in backward (training only). The depth stash lives in the
        # per-call context, so a recomputed block reads the same sources as the first pass.
        self.activation_checkpointing = False
        self.checkpoint_every = 1  # with it on, recompute applications 0, n, 2n, ...

    def set_loop_iterations(self, iterations: int) -> None:
        """Test-time depth: apply the looped block ``iterations`` times from now on. The weights
        do not depend on r; the method is rebuilt for the new L_eff (its options as resolved,
        e.g. Depth-Attention's stride, are kept) and takes over the old one's parameters."""
        config = dataclasses.replace(self.config, loop_iterations=iterations)  # validates
        weight = self.embed_tokens.weight
        method = build_method(config).to(device=weight.device, dtype=weight.dtype)
        method.load_state_dict(self.cross_layer.state_dict(), strict=True)
        method.train(self.cross_layer.training)
        self.config, self.cross_layer = config, method
        self.applications = applications(config)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: DecoderCache | None = None,
                position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids (B, T), or inputs_embeds (B, T, D) instead → hidden states (B, T, D).

        hidden_states: a list that receives Qwen3's L + 1 hidden states: the embeddings, what
        each block but the last hands on (the method's readout of its residual stream), and the
        returned, final-normed output. A looped model gives L_eff + 1: one per application.
        """
        new_valid = self.check_inputs(input_ids, attention_mask, cache, position_ids,
                                      inputs_embeds)
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and cache is not None:
            raise ValueError("activation checkpointing recomputes blocks in backward, which "
                             "would write the cache twice: pass no cache when training with it")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if cache is not None:
            past, key_valid, positions = cache.begin(new_valid, T, B)
        else:
            past = 0
            key_valid = new_valid if new_valid is not None and not bool(new_valid.all()) else None
            if key_valid is None:
                positions = torch.arange(T, device=x.device).expand(B, T)
            else:
                positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
        if position_ids is not None:
            positions = position_ids
        if getattr(cache, "fixed_shape", False):  # every slot, masked (StaticKVCache)
            attn_mask, is_causal = cache.attention_mask(), False
        else:
            attn_mask, is_causal = attention_mask_for(T, past, key_valid, x.device)

        cos, sin = self.rotary_emb(positions, x.dtype)
        ctx = ForwardContext(method=self.cross_layer, cos=cos, sin=sin, attn_mask=attn_mask,
                             is_causal=is_causal, cache=cache)
        stream = self.cross_layer.init_stream(x, ctx)
        if hidden_states is not None:
            hidden_states.append(x)
        last = len(self.applications) - 1
        for app in self.applications:  # prelude, looped block × r, coda (not looped: 0 .. L − 1)
            if app.starts_iteration:
                if app.iteration == 0:
                    prelude_output = stream  # the embeddings when there is no prelude
                stream = self.loop_injection(stream, prelude_output)
            block = self.layers[app.layer]
            if checkpointing and app.index % self.checkpoint_every == 0:
                stream = self.checkpoint_function(block, stream, ctx, app.index)
            else:
                stream = block(stream, ctx, app.index)
            if hidden_states is not None and app.index < last:
                hidden_states.append(self.cross_layer.final_hidden(stream, ctx))
        if cache is not None:
            cache.end(T)
        out = self.norm(self.cross_layer.final_hidden(stream, ctx))
        if hidden_states is not None:
            hidden_states.append(out)
        return out

    @property
    def gradient_checkpointing(self) -> bool:
        """transformers' name for it (``is_gradient_checkpointing`` reads it)."""
        return self.activation_checkpointing

    def check_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     cache: DecoderCache | None, position_ids: torch.Tensor | None,
                     inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Validate before any work starts; return the new tokens' padding mask as bool."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (batch, seq) and inputs_embeds "
                             "(batch, seq, hidden_size)")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must have shape (batch, seq, hidden_size="
                                 f"{self.config.hidden_size}); got {tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
        elif input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq); got "
                             f"shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}")
        else:
            B, T = input_ids.shape
        if T == 0:
            raise ValueError("the input has no tokens (seq length 0); pass at least one")
        if torch.compiler.is_compiling():
            # a compiled step reads nothing back from the device: checked when called eagerly
            return None if attention_mask is None else _new_columns(attention_mask, cache, T)
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence length ({past + T} = {past} cached + {T} new) exceeds "
                             f"max_seq_len ({self.config.max_seq_len})")
        if cache is not None and past and cache.batch_size != B:
            raise ValueError(f"input batch ({B}) differs from the cache's batch size "
                             f"({cache.batch_size})")
        if input_ids is not None:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"token id {bad} is out of range: ids must be in "
                                 f"[0, vocab_size={self.config.vocab_size})")
        if position_ids is not None and tuple(position_ids.shape) != (B, T):
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must be ({B}, {T})")
        if attention_mask is None:
            return None
        allowed = {(B, T), (B, past + T)}
        if getattr(cache, "fixed_shape", False):
            allowed.add((B, cache.max_len))  # over every slot, as generate passes it
        if tuple(attention_mask.shape) not in allowed:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must be "
                             f"{' or '.join(str(s) for s in sorted(allowed))}")
        if past and attention_mask.shape[1] > T \
                and not torch.equal(attention_mask[:, :past].bool(), cache.past_valid()):
            raise ValueError(f"attention_mask's first {past} columns (the cached tokens) "
                             f"contradict the padding the cache recorded; pass the mask of the "
                             f"earlier calls extended by the new tokens, or only the new "
                             f"tokens' columns ({B}, {T})")
        return _new_columns(attention_mask, cache, T)


def _new_columns(attention_mask: torch.Tensor, cache: DecoderCache | None,
                 num_new: int) -> torch.Tensor:
    """The new tokens' (B, T) bool columns of a mask over the new, past + new, or (a
    fixed-shape cache) every slot."""
    if getattr(cache, "fixed_shape", False) and attention_mask.shape[1] == cache.max_len:
        attention_mask = cache.new_columns(attention_mask, num_new)
    return attention_mask[:, -num_new:].bool()


def lm_logits(decoder: Decoder, lm_head: nn.Linear, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None = None, cache: DecoderCache | None = None,
              position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
    """decoder → LM head: (B, T, vocab) logits, or (B, k, vocab) for the last k positions.
    ``CausalLM.forward`` and the Hugging Face wrapper's forward both run this."""
    require_int("logits_to_keep", logits_to_keep, 0)
    hidden = decoder(input_ids, attention_mask, cache, position_ids)  # (B, T, D)
    return lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)


class CausalLM(nn.Module):
    """``model(input_ids) → logits (B, T, vocab)``; state dict = ``Qwen3ForCausalLM``'s.

    Args of ``forward``:
        input_ids: (B, T) token ids in [0, vocab_size).
        attention_mask: 1 for real tokens, 0 for padding; (B, T), or (B, past + T) when a cache
            is passed (Hugging Face convention; only the last T columns are new).
        cache: a ``KVCache`` (or any ``DecoderCache``, e.g. the Hugging Face
            ``DepthAttnCache``); the new tokens' keys and (mixed) values are appended to it.
        position_ids: (B, T) RoPE positions; derived from the mask and the cache when omitted.
        logits_to_keep: 0 for every position's logits, k for the last k only (B, k, vocab), as
            transformers' argument of that name: a prefill needs only the last.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    @classmethod
    def from_modules(cls, config: ModelConfig, decoder: Decoder, lm_head: nn.Linear) -> CausalLM:
        """A CausalLM around existing modules, shared, not copied (e.g. the Hugging Face
        wrapper's), without building or initialising new weights."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.config, model.model, model.lm_head = config, decoder, lm_head
        model.train(decoder.training)
        return model

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std²) for every linear and embedding weight, RMSNorm gains at 1 (as
        Qwen3's ``_init_weights``); methods with parameters re-initialise theirs afterwards."""
        generic = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        for module in generic:
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        # Then every other module's own init (norm gains, RoPE table, a method's special init),
        # so that a method's reset_parameters has the last word over its own linears.
        for module in self.modules():
            if module is not self and not isinstance(module, (nn.Linear, nn.Embedding)) \
                    and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_loop_iterations(self, iterations: int) -> None:
        """Test-time depth of a looped model: see ``Decoder.set_loop_iterations``."""
        self.model.set_loop_iterations(iterations)
        self.config = self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: DecoderCache | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        return lm_logits(self.model, self.lm_head, input_ids, attention_mask, cache,
                         position_ids, logits_to_keep)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor,
             attention_mask: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
             ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """Mean (or, with reduction="sum", summed) next-token cross-entropy over the targets
        that are not ``ignore_index``.

        Equals ``F.cross_entropy(self(input_ids).float().flatten(0, 1), targets.flatten())``, but
        the (B, T, vocab) logits are never materialised: the LM head runs inside the chunked
        cross-entropy, ``chunk_size`` tokens at a time. targets: (B, T), already shifted (the
        target of position t is the token at t + 1).
        """
        if tuple(targets.shape) != tuple(input_ids.shape):
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        hidden = self.model(input_ids, attention_mask)  # (B, T, D)
        # lm_head.weight is the embedding matrix when tied, so both uses get its gradient.
        return chunked_cross_entropy(hidden, self.lm_head.weight, targets, chunk_size,
                                     ignore_index, reduction)
