"""The decoder (Qwen3Model's shape) and the causal LM head on top (Qwen3ForCausalLM's)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from depthattn.methods import build_method, resolve_config, set_depth_mix_impl
from depthattn.methods.base import ForwardContext
from depthattn.model.attention import (
    attention_mask_for,
    is_packed,
    packed_sequence_mask,
)
from depthattn.model.block import Block
from depthattn.model.cache import DecoderCache
from depthattn.model.config import ModelConfig
from depthattn.model.looped import Application, LoopInjection, applications
from depthattn.model.norm import RMSNorm
from depthattn.model.rope import RotaryEmbedding
from depthattn.ops.chunked_cross_entropy import (
    DEFAULT_CHUNK_SIZE,
    chunked_cross_entropy,
)
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError


class HiddenState(nn.Identity):
    """What each hidden state passes through when the caller asks for them
    (``Decoder.forward(..., output_hidden_states=True)``): nothing but a place where a forward
    hook records them, as transformers' ``capture_outputs`` does."""


class Decoder(nn.Module):
    """embed → N blocks → final RMSNorm. Parameter names are Qwen3's.

    A looped config (docs/method.md §7, ``depthattn.model.looped``) applies its blocks in the order prelude,
    looped block × r, coda; application e runs block ``applications[e].layer`` under index e.

    ``forward(input_ids, attention_mask, cache, position_ids)`` validates its inputs before any
    work and returns the (B, T, D) hidden states; see ``CausalLM`` for the arguments.

    Training at random depth (Huginn): ``forward(..., loop_iterations=r,
    backprop_iterations=b)`` runs one call at r iterations, without changing the configured r,
    and with gradients through the last b iterations only; see ``forward``.
    """

    # Non-reentrant: Depth-Attention's sources reach later blocks through the call's depth stash,
    # not through the block's arguments, and reentrant checkpointing would drop their gradients.
    checkpoint_function: Callable = staticmethod(functools.partial(checkpoint, use_reentrant=False))
    # Refuse positions at or past max_seq_len. The Hugging Face model does not, as Qwen3 does
    # not: there max_position_embeddings is the trained context, which scaled RoPE extends.
    limit_positions = True

    def __init__(self, config: ModelConfig, block_class: type[Block] = Block) -> None:
        """block_class: ``Block`` or a subclass of it (the Hugging Face layer's adds transformers'
        gradient checkpointing)."""
        super().__init__()
        config = resolve_config(config)  # the method's options validated, defaults filled
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(block_class(config, i) for i in range(config.num_layers))
        self.applications = applications(config)  # the order the blocks run, e = 0 .. L_eff − 1
        # Input injection of a looped model; `model.loop_injection.weight` for concat only.
        self.loop_injection = LoopInjection(config) if config.looped else None
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hidden_state = HiddenState()
        self.rotary_emb = RotaryEmbedding(config)
        # Methods with parameters keep them here, under `model.cross_layer.*`.
        self.cross_layer = build_method(config)
        # Recompute each block in backward (training only). The depth stash lives in the
        # per-call context, so a recomputed block reads the same sources as the first pass.
        self.activation_checkpointing = False
        self.checkpoint_every = 1  # with it on, recompute applications 0, n, 2n, ...

    @property
    def has_window_layers(self) -> bool:
        return any(self.config.layer_window(i) is not None for i in range(self.config.num_layers))

    def set_loop_iterations(self, iterations: int) -> None:
        """Test-time depth: apply the looped block ``iterations`` times from now on. The weights
        and the method (its options as resolved, e.g. Depth-Attention's stride) do not depend
        on r: the method reads each call's schedule of applications."""
        self.config = dataclasses.replace(self.config, loop_iterations=iterations)  # validates
        self.applications = applications(self.config)

    def schedule(self, loop_iterations: int | None = None) -> list[Application]:
        """The applications of a call at ``loop_iterations`` iterations (None: the configured
        r), in the order they run; the configured r is left as it is."""
        if loop_iterations is None or loop_iterations == self.config.loop_iterations:
            return self.applications
        require_int("loop_iterations", loop_iterations, 1)
        if not self.config.looped:
            raise DepthAttnError(f"loop_iterations ({loop_iterations}) needs a looped block: set "
                                 f"loop_layers (k >= 1), or leave loop_iterations at 1")
        return applications(self.config, loop_iterations)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: DecoderCache | None = None,
                position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False,
                loop_iterations: int | None = None,
                backprop_iterations: int | None = None, attention_kwargs: dict | None = None,
                masks: bool = True) -> torch.Tensor:
        """input_ids (B, T), or inputs_embeds (B, T, D) instead → hidden states (B, T, D).

        attention_mask: the (B, T) padding mask (1 = real token; see ``CausalLM``), or a
        prepared 4-D mask (B or 1, 1, T, T_kv), bool (True = may attend) or float (added to the
        scores), used as it is. position_ids that restart within a row (several sequences packed
        in one row, no padding mask, no cache) keep each sequence to itself.
        attention_kwargs: passed to each block's attention function. masks=False: the attention
        function reads no mask (a serving engine's paged attention), so none is built.

        output_hidden_states: pass Qwen3's L + 1 hidden states through ``self.hidden_state``
        (for a hook to record): the embeddings, what each block but the last hands on (the
        method's readout of its residual stream), and the returned, final-normed output. A
        looped model gives L_eff + 1: one per application. Off, no readout is computed.
        loop_iterations: r for this call only (a looped model; None: the configured r). No
            cache then, unless r is the configured one: caches hold the configured L_eff.
        backprop_iterations: b >= 1: iterations 0 .. r − b − 1 of the looped block run under
            ``torch.no_grad()``, so the gradient flows through the last b only (Huginn's
            truncated backpropagation); None (or b >= r): through all. The prelude and coda
            always take gradients; the prelude's output reaches the gradient iterations through
            the injection (add, concat) and the depth sources, while the state and the depth
            stash entries of the no_grad iterations are constants to the rest of the call.
        """
        new_valid = self.check_inputs(input_ids, attention_mask, cache, position_ids,
                                      inputs_embeds)
        if cache is not None and loop_iterations not in (None, self.config.loop_iterations):
            raise DepthAttnError(f"loop_iterations ({loop_iterations}) differs from the configured "
                                 f"{self.config.loop_iterations}, and the cache holds the "
                                 f"configured "
                                 f"depth's applications: call "
                                 f"set_loop_iterations({loop_iterations}) "
                                 f"and start a new cache to decode at another depth")
        apps, method = self.schedule(loop_iterations), self.cross_layer
        first_grad_iteration = self._first_grad_iteration(apps, backprop_iterations)
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and cache is not None:
            raise DepthAttnError("activation checkpointing recomputes blocks in backward, which "
                                 "would write the cache twice: pass no cache when training with it")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if position_ids is not None:
            position_ids = position_ids.expand(B, T)  # (1, T) is shared by every row
        # sliding-window layers (if any) share one window and get a mask of their own
        window = self.config.sliding_window if self.has_window_layers else None
        window_mask = None
        if cache is not None:
            positions = cache.begin(new_valid, T, B, x.device)
            attn_mask, is_causal = cache.attention_mask()
            if window is not None:
                window_mask = cache.attention_mask(window)[0]
        else:
            key_valid = new_valid if new_valid is not None and not bool(new_valid.all()) else None
            if key_valid is None:
                positions = torch.arange(T, device=x.device).expand(B, T)
            else:
                positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
            attn_mask, is_causal = attention_mask_for(T, 0, key_valid, x.device)
            if window is not None:
                window_mask = attention_mask_for(T, 0, key_valid, x.device, window)[0]
            if position_ids is not None and attention_mask is None and masks:
                packed = packed_sequence_mask(position_ids)
                if packed is not None:
                    attn_mask, is_causal = packed, False
                    if window is not None:
                        window_mask = packed_sequence_mask(position_ids, window)
        if attention_mask is not None and attention_mask.dim() == 4:
            attn_mask, is_causal = attention_mask, False  # prepared by the caller, for every layer
            window_mask = None
        if not masks:
            attn_mask, is_causal, window_mask = None, True, None
        if position_ids is not None:
            positions = position_ids

        cos, sin = self.rotary_emb(x, positions)
        ctx = ForwardContext(cos=cos, sin=sin, attn_mask=attn_mask, is_causal=is_causal,
                             window_mask=window_mask, cache=cache, applications=apps,
                             attention_kwargs=attention_kwargs)
        stream = method.init_stream(x, ctx)
        if output_hidden_states:
            self.hidden_state(x)
        last = len(apps) - 1
        for app in apps:  # prelude, looped block × r, coda (not looped: 0 .. L − 1)
            frozen = app.iteration is not None and app.iteration < first_grad_iteration
            with torch.no_grad() if frozen else contextlib.nullcontext():
                if app.starts_iteration:
                    if app.iteration == 0:
                        prelude_output = stream  # the embeddings when there is no prelude
                    stream = self.loop_injection(stream, prelude_output)
                block = self.layers[app.layer]
                if checkpointing and not frozen and app.index % self.checkpoint_every == 0:
                    stream = self.checkpoint_function(block, stream, method, ctx, app.index)
                else:
                    stream = block(stream, method, ctx, app.index)
                if output_hidden_states and app.index < last:
                    self.hidden_state(method.final_hidden(stream, ctx))
        if cache is not None:
            cache.end()
        out = self.norm(method.final_hidden(stream, ctx))
        if output_hidden_states:
            self.hidden_state(out)
        return out

    def _first_grad_iteration(self, apps: list[Application],
                              backprop_iterations: int | None) -> int:
        """The first iteration t that takes gradients: r − b, or 0 (all) for None or b >= r."""
        if backprop_iterations is None:
            return 0
        if not self.config.looped:
            raise DepthAttnError(f"backprop_iterations ({backprop_iterations}) counts iterations of "
                                 f"a looped block, and this model is not looped (loop_layers = 0)")
        require_int("backprop_iterations", backprop_iterations, 1, hint=" (None = all)")
        r = 1 + max(app.iteration for app in apps if app.iteration is not None)
        return max(0, r - backprop_iterations)

    def check_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     cache: DecoderCache | None, position_ids: torch.Tensor | None,
                     inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Validate before any work starts; return the new tokens' padding mask as bool."""
        if (input_ids is None) == (inputs_embeds is None):
            raise DepthAttnError("pass exactly one of input_ids (batch, seq) and inputs_embeds "
                                 "(batch, seq, hidden_size)")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise DepthAttnError(f"inputs_embeds must have shape (batch, seq, hidden_size="
                                     f"{self.config.hidden_size}); got "
                                     f"{tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
        elif input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32):
            raise DepthAttnError(f"input_ids must be an integer tensor of shape (batch, seq); got "
                                 f"shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}")
        else:
            B, T = input_ids.shape
        if T == 0:
            raise DepthAttnError("the input has no tokens (seq length 0); pass at least one")
        prepared = attention_mask is not None and attention_mask.dim() == 4
        if torch.compiler.is_compiling():
            # a compiled step reads nothing back from the device: checked when called eagerly
            if attention_mask is None or prepared:
                return None
            return _new_columns(attention_mask, cache, T)
        past = cache.length if cache is not None else 0
        if position_ids is not None and tuple(position_ids.shape) not in ((B, T), (1, T)):
            raise DepthAttnError(f"position_ids shape {tuple(position_ids.shape)} must be ({B}, {T}) "
                                 f"or (1, {T})")
        if cache is not None and position_ids is not None and attention_mask is None \
                and is_packed(position_ids):
            raise DepthAttnError("position_ids restart within a row (several sequences packed in "
                                 "one row): a cache would let later tokens attend across them; "
                                 "pass no cache (use_cache=False) with packed rows")
        if not self.limit_positions:
            pass
        elif cache is not None or position_ids is None:
            if past + T > self.config.max_seq_len:
                raise DepthAttnError(f"sequence length ({past + T} = {past} cached + {T} new) "
                                     f"exceeds max_seq_len ({self.config.max_seq_len})")
        elif int(position_ids.max()) >= self.config.max_seq_len:
            # packed rows may be longer than max_seq_len: the limit is on positions
            raise DepthAttnError(f"position {int(position_ids.max())} is out of range: positions "
                                 f"must be below max_seq_len ({self.config.max_seq_len})")
        if cache is not None and past and cache.batch_size != B:
            raise DepthAttnError(f"input batch ({B}) differs from the cache's batch size "
                                 f"({cache.batch_size})")
        if input_ids is not None:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise DepthAttnError(f"token id {bad} is out of range: ids must be in "
                                     f"[0, vocab_size={self.config.vocab_size})")
        if attention_mask is None:
            return None
        if prepared:
            kv_len = cache.max_len if cache is not None and cache.fixed_shape else past + T
            batch, heads, rows, cols = attention_mask.shape
            if batch not in (1, B) or heads not in (1, self.config.num_heads) \
                    or (rows, cols) != (T, kv_len):
                raise DepthAttnError(f"a 4-D attention_mask must have shape ({B} or 1, 1 or "
                                     f"{self.config.num_heads}, {T}, {kv_len}) (batch, heads, "
                                     f"new tokens, keys); got {tuple(attention_mask.shape)}")
            return None
        allowed = {(B, T), (B, past + T)}
        if cache is not None and cache.fixed_shape:
            allowed.add((B, cache.max_len))  # over every slot, as generate passes it
        if tuple(attention_mask.shape) not in allowed:
            raise DepthAttnError(f"attention_mask shape {tuple(attention_mask.shape)} must be "
                                 f"{' or '.join(str(s) for s in sorted(allowed))}")
        if past and attention_mask.shape[1] > T \
                and not torch.equal(attention_mask[:, :past].bool(), cache.past_valid()):
            raise DepthAttnError(f"attention_mask's first {past} columns (the cached tokens) "
                                 f"contradict the padding the cache recorded; pass the mask of the "
                                 f"earlier calls extended by the new tokens, or only the new "
                                 f"tokens' columns ({B}, {T})")
        return _new_columns(attention_mask, cache, T)


def _new_columns(attention_mask: torch.Tensor, cache: DecoderCache | None,
                 num_new: int) -> torch.Tensor:
    """The new tokens' (B, T) bool columns of a mask over the new, past + new, or (a
    fixed-shape cache) every slot."""
    if cache is not None:
        return cache.new_columns(attention_mask, num_new).bool()
    return attention_mask[:, -num_new:].bool()


def lm_logits(decoder: Decoder, lm_head: nn.Linear, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None = None, cache: DecoderCache | None = None,
              position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
              loop_iterations: int | None = None,
              backprop_iterations: int | None = None) -> torch.Tensor:
    """decoder → LM head: (B, T, vocab) logits, or (B, k, vocab) for the last k positions.
    ``CausalLM.forward`` and the Hugging Face wrapper's forward both run this."""
    require_int("logits_to_keep", logits_to_keep, 0)
    hidden = decoder(input_ids, attention_mask, cache, position_ids,
                     loop_iterations=loop_iterations,
                     backprop_iterations=backprop_iterations)  # (B, T, D)
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
        loop_iterations, backprop_iterations: a looped model's depth for this call and the
            iterations the gradient flows through (training at random depth); see
            ``Decoder.forward``. ``loss`` takes them too.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.model = Decoder(config)
        config = self.config = self.model.config  # the method's options resolved
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

    def set_depth_mix_impl(self, impl: str) -> None:
        """Which depth mix Depth-Attention runs from now on: "auto", the rule of
        docs/depth_mix.md, or one implementation by name ("reference", "unstacked",
        "inference", "triton"). A runtime choice: not part of the config, not saved."""
        set_depth_mix_impl(self, impl)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: DecoderCache | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
                loop_iterations: int | None = None,
                backprop_iterations: int | None = None) -> torch.Tensor:
        return lm_logits(self.model, self.lm_head, input_ids, attention_mask, cache,
                         position_ids, logits_to_keep, loop_iterations, backprop_iterations)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor,
             attention_mask: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
             ignore_index: int = -100, reduction: str = "mean",
             loop_iterations: int | None = None,
             backprop_iterations: int | None = None) -> torch.Tensor:
        """Mean (or, with reduction="sum", summed) next-token cross-entropy over the targets
        that are not ``ignore_index``.

        Equals ``F.cross_entropy(self(input_ids).float().flatten(0, 1), targets.flatten())``, but
        the (B, T, vocab) logits are never materialised: the LM head runs inside the chunked
        cross-entropy, ``chunk_size`` tokens at a time. targets: (B, T), already shifted (the
        target of position t is the token at t + 1). loop_iterations, backprop_iterations: see
        ``Decoder.forward`` (a looped model trained at random depth).
        """
        if tuple(targets.shape) != tuple(input_ids.shape):
            raise DepthAttnError(f"targets shape {tuple(targets.shape)} must equal input_ids shape "
                                 f"{tuple(input_ids.shape)}")
        hidden = self.model(input_ids, attention_mask, loop_iterations=loop_iterations,
                            backprop_iterations=backprop_iterations)  # (B, T, D)
        # lm_head.weight is the embedding matrix when tied, so both uses get its gradient.
        return chunked_cross_entropy(hidden, self.lm_head.weight, targets, chunk_size,
                                     ignore_index, reduction)
