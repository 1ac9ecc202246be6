"""The core decoder as Hugging Face ``PreTrainedModel``s (docs/design.md): ``DepthAttnModel``
(Qwen3Model's place: the base model, ``last_hidden_state``), ``DepthAttnForCausalLM`` and the
task heads Qwen3 has (sequence and token classification, question answering).

No second copy of the model: ``DepthAttnModel``'s modules ARE a core ``Decoder``'s, so parameter
names are Qwen3's. Attention goes through transformers' attention interface
(``config._attn_implementation``: eager, sdpa, or a registered function such as a serving
engine's); the depth mix runs before it, so whatever the function reads or caches is the mixed
value. ``generate`` is transformers' own, with our cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from depthattn.hf.cache import DepthAttnCache, DepthAttnStaticCache, static_padding_mask
from depthattn.hf.configuration import DepthAttnConfig
from depthattn.methods.base import AttentionInput, CrossLayerMethod, ForwardContext
from depthattn.model.attention import Attention, is_packed
from depthattn.model.latent_attention import LatentAttention
from depthattn.model.block import Block
from depthattn.model.cache import KVCache, StaticKVCache
from depthattn.model.decoder import CausalLM, Decoder, HiddenState
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

# transformers 5.24 renamed `past_key_values` to `cache` (keeping the old name as an alias);
# the output field and generate's keyword follow the installed version.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ \
    else "past_key_values"
# keywords of the loss (ForCausalLMLoss's), taken by the LM head and never passed on
LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")
# transformers' keywords for packed (padding-free) batches, read by flash attention: eager and
# sdpa find the sequences in position_ids instead
PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
OUR_CACHES = (DepthAttnCache, DepthAttnStaticCache, KVCache, StaticKVCache)
# attention functions that read no mask: a serving engine's paged attention keeps each
# sequence's tokens in its own blocks (and gets every request's tokens packed in one row)
UNMASKED_ATTENTION = ("vllm",)
# output_hidden_states records what passes the decoder's HiddenState: all L_eff + 1 states,
# the embeddings among them. A negative index counts back from config.num_hidden_states where
# OutputRecorder has num_hidden_layers_key (transformers 5.25); 5.19 takes indices as given, so
# that a negative one selects nothing there (for Qwen3 too).
HIDDEN_STATES = OutputRecorder(HiddenState, capture_initial_hidden_state=False, **(
    {"num_hidden_layers_key": "num_hidden_states"}
    if "num_hidden_layers_key" in OutputRecorder.__dataclass_fields__ else {}))


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    scaling: float | None = None, dropout: float = 0.0, is_causal: bool = False,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3's eager attention, which returns the weights (B, H, T, T_kv). It adds a float
    mask to the scores, so the core's boolean mask (True = may attend), or its causal flag,
    becomes one. Other keywords (a trainer's packing hints) are not needed."""
    # imported here: Qwen3's module imports transformers' Auto classes, which import ours
    from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

    T, S = query.shape[2], key.shape[2]
    if attention_mask is None and is_causal:
        attention_mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype,
                                     device=query.device).masked_fill(
            ~attention_mask, torch.finfo(query.dtype).min)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                   dropout=dropout)


def stream_as_tensors(checkpoint_function: Callable) -> Callable:
    """Reentrant checkpointing differentiates through the tensors among a block's arguments
    and outputs only; a method's stream may be a dataclass of tensors (hyper-connections'
    streams, DenseFormer's outputs so far). Pass it in and out as its tensors."""

    def run(function: Callable, stream: Any, *rest: Any) -> Any:
        tensors, rebuild = flatten_tensors(stream)
        rebuild_output: list[Callable] = []

        def block(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out, rebuild_out = flatten_tensors(function(rebuild(list(flat)), *rest))
            rebuild_output[:] = [rebuild_out]
            return tuple(out)

        out = checkpoint_function(block, *tensors)
        return rebuild_output[0](list(out))

    return run


def flatten_tensors(obj: Any) -> tuple[list[torch.Tensor], Callable[[list], Any]]:
    """The tensors in ``obj`` (a tensor, or tuples, lists, mappings and dataclasses of them),
    and a function that builds the same structure from a list of replacements, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj], lambda flat: flat.pop(0)
    if isinstance(obj, (tuple, list)):
        parts = [flatten_tensors(item) for item in obj]
        return [t for ts, _ in parts for t in ts], \
            lambda flat: type(obj)(rebuild(flat) for _, rebuild in parts)
    if isinstance(obj, Mapping):
        parts = {key: flatten_tensors(item) for key, item in obj.items()}
        return [t for ts, _ in parts.values() for t in ts], \
            lambda flat: type(obj)({key: rebuild(flat) for key, (_, rebuild) in parts.items()})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        tensors, rebuild_fields = flatten_tensors(fields)
        return tensors, lambda flat: dataclasses.replace(obj, **rebuild_fields(flat))
    return [], lambda flat: obj


class InterfaceAttention:
    """The attention call of the Hugging Face layer: the function ``config._attn_implementation``
    names in transformers' attention interface (eager, sdpa, or a registered one), after the
    cross-layer hook. Serving engines' Transformers backends find the attention call by reading
    this forward: the interface lookup and one call of it, with ``scaling=self.scaling``.
    ``config`` is the model's Hugging Face config (set by ``DepthAttnModel``; not a module)."""

    config: DepthAttnConfig

    def forward(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                ctx: ForwardContext, application: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.queries_keys_values(x, method, ctx, application)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention)
        mask, is_causal = ctx.mask_for(self.sliding_window)
        out, weights = attention_interface(self, query, key, value, mask, scaling=self.scaling,
                                           sliding_window=self.sliding_window,
                                           is_causal=is_causal, **ctx.attention_kwargs)
        return self.output(out, query), weights


class DepthAttnAttention(InterfaceAttention, Attention):
    """The core GQA attention, calling transformers' attention interface after the depth mix."""


class DepthAttnLatentAttention(InterfaceAttention, LatentAttention):
    """The core multi-head latent attention, calling transformers' attention interface on the
    keys and values expanded from the (mixed) latent cache entries."""


class DepthAttnDecoderLayer(Block, GradientCheckpointingLayer):
    """The core ``Block``, checkpointed the transformers way: ``gradient_checkpointing_enable``
    sets ``gradient_checkpointing`` and ``_gradient_checkpointing_func`` on it."""

    attention_class = DepthAttnAttention
    latent_attention_class = DepthAttnLatentAttention


class DepthAttnPreTrainedModel(PreTrainedModel):
    config_class = DepthAttnConfig
    config: DepthAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DepthAttnDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True  # registered attention functions (serving engines)
    _can_compile_fullgraph = True
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """As ``CausalLM.init_weights``: N(0, init_std²) for linears and embeddings, then each
        other module's own ``reset_parameters`` (norm gains, RoPE table, a method's own init).
        Hugging Face applies this children first, so a method module has the last word."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:  # the task heads' (Qwen3's rule)
                nn.init.zeros_(module.bias)
        elif module is not self and hasattr(module, "reset_parameters"):
            module.reset_parameters()

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize, then the core config follows (the new ids are accepted at once)."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.base_model.decoder.config = self.config.to_model_config()
        return embeddings

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func: Callable = checkpoint,
                                    every_n_layers: int = 1) -> None:
        """``gradient_checkpointing_enable()`` lands here: every ``every_n_layers``-th block is
        recomputed in backward, through the function transformers built (its kwargs, CPU
        offload). Reentrant checkpointing only for methods whose blocks take everything they
        differentiate through their arguments (vanilla)."""
        require_int("every_n_layers", every_n_layers, 1)
        keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
        if gradient_checkpointing_func is checkpoint:  # bare: torch asks for use_reentrant
            gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        elif keywords.get("use_reentrant", False):
            method = next(m for m in self.modules() if isinstance(m, CrossLayerMethod))
            if enable and method.reads_context_activations:
                raise DepthAttnError(f"use_reentrant=True is not supported for method "
                                     f"{self.config.method!r}: its blocks read earlier blocks' "
                                     f"activations through the depth stash, outside their "
                                     f"arguments, whose gradients reentrant checkpointing would "
                                     f"drop; use gradient_checkpointing_kwargs="
                                     f"{{'use_reentrant': False}}")
            gradient_checkpointing_func = stream_as_tensors(gradient_checkpointing_func)
        layers = [m for m in self.modules() if isinstance(m, DepthAttnDecoderLayer)]
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = enable and i % every_n_layers == 0
            layer._gradient_checkpointing_func = gradient_checkpointing_func


class DepthAttnModel(DepthAttnPreTrainedModel):
    """Qwen3Model's place: embeddings → blocks (with the cross-layer method) → final norm, as
    ``BaseModelOutputWithPast`` (``last_hidden_state``, the cache, hidden states, attentions).

    Its modules are those of ``self.decoder``, the core ``Decoder`` that runs the forward: one
    module dict, shared, so replacing a module on either replaces it on both. Hidden states and
    attention weights are recorded by transformers' ``capture_outputs``, as Qwen3Model's: each
    state that passes the decoder's ``HiddenState``, the weights each attention returns beside
    its output."""

    _can_record_outputs = {"hidden_states": HIDDEN_STATES, "attentions": [DepthAttnAttention,
                                                                      DepthAttnLatentAttention]}

    def __init__(self, config: DepthAttnConfig) -> None:
        super().__init__(config)
        self.adopt(Decoder(config.to_model_config(), block_class=DepthAttnDecoderLayer))
        self.post_init()

    def adopt(self, decoder: Decoder) -> None:
        """Make ``decoder``'s modules this model's (no copy); its blocks gain transformers'
        checkpointing (``DepthAttnDecoderLayer`` adds no state to ``Block``)."""
        if decoder._parameters or decoder._buffers:
            raise RuntimeError("a Decoder keeps its parameters in its modules")
        for layer in decoder.layers:
            if type(layer) is Block:
                layer.__class__ = DepthAttnDecoderLayer
            if type(layer.self_attn) is Attention:
                layer.self_attn.__class__ = DepthAttnAttention
            elif type(layer.self_attn) is LatentAttention:
                layer.self_attn.__class__ = DepthAttnLatentAttention
            layer.self_attn.__dict__["config"] = self.config  # the one config, not a copy
        decoder.limit_positions = False  # transformers' convention (see Decoder)
        self.__dict__["decoder"] = decoder  # not a child: its children are ours
        self._modules = decoder._modules

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    @capture_outputs
    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                past_key_values: Cache | KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None,
                output_attentions: bool | None = None,
                output_hidden_states: bool | list[int] | None = None,
                cache: Cache | KVCache | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        """``Qwen3Model.forward``: input_ids (B, T) or inputs_embeds (B, T, D) → the final-normed
        hidden states. attention_mask: (B, T), or (B, past + T) with a cache, 0 at padding; or a
        prepared 4-D mask. position_ids that restart at 0 within a row pack several sequences
        (padding-free batches). ``past_key_values`` (``cache`` in transformers >= 5.24): a
        ``DepthAttnCache`` (or a core ``KVCache``), appended to; with ``use_cache`` (default:
        the config's, off while checkpointing in training) and none given, a new one is
        returned. ``output_hidden_states``: True for the L + 1 states, or a list of indices
        into them (the others None); ``output_attentions``: each layer's weights (eager
        attention computes them; sdpa none). ``capture_outputs`` records both, and returns a
        tuple for ``return_dict=False``."""
        cache = _one_cache(past_key_values, cache)
        _check_cache_position(kwargs.pop("cache_position", None), cache,
                              (input_ids if input_ids is not None else inputs_embeds).shape[1])
        implementation = self.config._attn_implementation or "sdpa"
        if implementation in ("eager", "sdpa"):
            unknown = sorted(set(kwargs) - set(PACKING_KWARGS))
            if unknown:
                raise DepthAttnError(f"forward got unexpected argument(s) {', '.join(unknown)}")
            if any(k in kwargs for k in PACKING_KWARGS) and position_ids is None:
                raise DepthAttnError("packed inputs (cu_seq_lens_*) need their position_ids, "
                                     "restarting at 0 for each sequence")
            kwargs = {}  # eager and sdpa find packed sequences in position_ids
        checkpointing = self.training and torch.is_grad_enabled() and any(
            layer.gradient_checkpointing for layer in self.layers)
        if use_cache is None:  # packed rows are not cached (the core refuses it when asked)
            use_cache = bool(self.config.use_cache) and not checkpointing and not (
                position_ids is not None
                and (attention_mask is None or attention_mask.dim() == 4)
                and not torch.compiler.is_compiling() and is_packed(position_ids))
        if checkpointing and cache is not None:
            raise DepthAttnError("gradient checkpointing recomputes blocks in backward, which "
                                 "would write the cache twice: pass no cache when training "
                                 "with it")
        if cache is None and use_cache and not checkpointing:
            cache = DepthAttnCache(self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden = self.decoder(input_ids, attention_mask, cache, position_ids,
                              inputs_embeds=inputs_embeds,
                              output_hidden_states=bool(output_hidden_states),
                              attention_kwargs=kwargs,
                              masks=implementation not in UNMASKED_ATTENTION)
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_FIELD: cache})


class DepthAttnForCausalLM(DepthAttnPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # Qwen3's: each rank gets all the logits

    def __init__(self, config: DepthAttnConfig) -> None:
        super().__init__(config)
        self.model = DepthAttnModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def core_config(self) -> Any:
        """The core ``ModelConfig`` (the method's options resolved)."""
        return self.model.decoder.config

    def kv_heads_per_rank(self) -> int:
        """The kv heads this process computes: all H_kv, or under tensor parallelism (k_proj
        split colwise) its share, k_proj's local rows / d. An MLA cache has one latent entry
        per token: 1."""
        if self.core_config.attention == "mla":
            return 1
        weight = self.model.layers[0].self_attn.k_proj.weight
        if hasattr(weight, "to_local"):  # a DTensor: its shape is the whole tensor's
            weight = weight.to_local()
        return weight.shape[0] // self.core_config.head_dim

    def core(self) -> CausalLM:
        """A ``CausalLM`` whose ``model`` and ``lm_head`` ARE this model's modules (no copy), for
        the core API: ``generate``, ``KVCache.for_model``, ``capture_depth_weights``..."""
        return CausalLM.from_modules(self.core_config, self.model.decoder, self.lm_head)

    @classmethod
    def from_core(cls, model: CausalLM, **config_kwargs: Any) -> DepthAttnForCausalLM:
        """Wrap a core ``CausalLM``: the Hugging Face model takes over its modules (no copy)."""
        config = DepthAttnConfig.from_model_config(model.config, **config_kwargs)
        with torch.device("meta"):
            wrapper = cls(config)
        wrapper.model.adopt(model.model)
        wrapper.lm_head = model.lm_head
        return wrapper.train(model.training)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def set_loop_iterations(self, iterations: int) -> None:
        """Test-time depth of a looped model (``Decoder.set_loop_iterations``); the Hugging Face
        config follows, so that save_pretrained and new caches see the new L_eff."""
        self.model.decoder.set_loop_iterations(iterations)
        self.config.loop_iterations = iterations

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> DepthAttnForCausalLM:
        """transformers' from_pretrained, except that a missing concat injection adapter is an
        error: transformers would initialise it silently, and the model would then compute
        something it was not trained for. (``loop_iterations=r`` among the keywords sets the
        test-time depth, as any config field.)"""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info.get("missing_keys", ()) if "loop_injection" in k)
        if missing:
            raise DepthAttnError(f"the checkpoint has no {', '.join(missing)}: its config asks for "
                                 f"loop_injection='concat' (the Linear(2D -> D) adapter), but its "
                                 f"weights were not trained with one; load it with the "
                                 f"loop_injection it was trained with")
        return (model, info) if want_info else model

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                past_key_values: Cache | KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                use_cache: bool | None = None,
                return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0,
                cache: Cache | KVCache | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        """``Qwen3ForCausalLM.forward``: ``DepthAttnModel.forward``'s arguments → logits;
        ``loss`` (shifted cross-entropy, -100 ignored) with ``labels``, or with ``shift_labels``
        (already shifted, as context-parallel and packed trainers pass them). Other keywords
        (``output_hidden_states``, ``output_attentions``, ...) go to the base model as given."""
        loss_kwargs = {k: kwargs.pop(k) for k in LOSS_KWARGS if k in kwargs}
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=past_key_values,
                             cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]  # positions to keep
        else:
            require_int("logits_to_keep", logits_to_keep, 0)
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **loss_kwargs)
        output = CausalLMOutputWithPast(loss=loss, logits=logits,
                                        hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions,
                                        **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None,
                                  cache: Any = None, past_key_values: Any = None,
                                  **kwargs: Any) -> torch.Tensor | None:
        """transformers asks for the mask of a compileable cache here: for our static cache,
        the padding mask widened to every slot, so that each decoding step has the same shapes
        (the model builds its attention mask from it and the cache)."""
        cache = cache if cache is not None else past_key_values
        if attention_mask is None or not isinstance(cache, DepthAttnStaticCache):
            return attention_mask
        return static_padding_mask(attention_mask, cache.max_len)

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict,
                                      *args: Any, **kwargs: Any) -> Any:
        """transformers prepares a ``DynamicCache`` or, with ``cache_implementation="static"``,
        a ``StaticCache`` (unless the caller passed a cache); ours take their place
        (``DepthAttnCache``, ``DepthAttnStaticCache``). The others (quantized, offloaded) would
        not hold the padding record decoding needs, and are refused."""
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args,
                                                       **kwargs)
        for key in ("cache", "past_key_values"):
            made = model_kwargs.get(key)
            if made is None or isinstance(made, OUR_CACHES) \
                    or getattr(made, "_is_user_defined", False):
                continue  # ours, or the caller's (forward checks its type)
            if type(made) is DynamicCache and not made.offloading:
                model_kwargs[key] = DepthAttnCache(self.config)
            elif type(made) is StaticCache and not made.offloading:
                # its length: the longest of this and earlier calls (no recompilation)
                model_kwargs[key] = DepthAttnStaticCache(self.core_config, made.get_max_length(),
                                                         self.dtype, self.kv_heads_per_rank())
            elif isinstance(made, Cache):
                raise DepthAttnError(f"cache_implementation="
                                     f"{generation_config.cache_implementation!r} is not "
                                     f"supported: "
                                     f"depthattn models decode with their DepthAttnCache; leave "
                                     f"cache_implementation unset")
        return result


def _one_cache(past_key_values: Any, cache: Any) -> Any:
    """The cache, passed under either of transformers' names; ours only."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise DepthAttnError("pass the cache as past_key_values or as cache, not both")
    cache = past_key_values if cache is None else cache
    if cache is not None and not isinstance(cache, OUR_CACHES):
        raise DepthAttnError(f"the cache must be a DepthAttnCache (depthattn.hf.DepthAttnCache: "
                             f"it stores Depth-Attention's mixed values and the padding), not "
                             f"{type(cache).__name__}")
    return cache


class DepthAttnForSequenceClassification(GenericForSequenceClassification,
                                         DepthAttnPreTrainedModel):
    """Qwen3's sequence classification head (the last real token's state) on ``DepthAttnModel``."""


class DepthAttnForTokenClassification(GenericForTokenClassification, DepthAttnPreTrainedModel):
    """Qwen3's token classification head on ``DepthAttnModel``."""


class DepthAttnForQuestionAnswering(GenericForQuestionAnswering, DepthAttnPreTrainedModel):
    """Qwen3's extractive question-answering head (span start and end) on ``DepthAttnModel``."""


def _check_cache_position(cache_position: torch.Tensor | None, cache: Any, num_new: int) -> None:
    """transformers < 5.24 passes the slots of the new tokens; the cache knows them, so a
    ``cache_position`` that says otherwise is an error rather than ignored (eager calls)."""
    if cache_position is None or torch.compiler.is_compiling():
        return
    past = cache.length if cache is not None else 0
    expected = torch.arange(past, past + num_new, device=cache_position.device)
    if cache_position.shape != expected.shape or not torch.equal(cache_position, expected):
        raise DepthAttnError(f"cache_position {cache_position.tolist()} contradicts the cache, which "
                             f"holds {past} tokens: the new tokens' slots are {expected.tolist()}")


def register_models() -> None:
    """AutoModel and the AutoModelFor* classes of our heads, for DepthAttnConfig."""
    from transformers.models.auto import modeling_auto as auto

    for auto_class, model_class in (
            (auto.AutoModel, DepthAttnModel),
            (auto.AutoModelForCausalLM, DepthAttnForCausalLM),
            (auto.AutoModelForSequenceClassification, DepthAttnForSequenceClassification),
            (auto.AutoModelForTokenClassification, DepthAttnForTokenClassification),
            (auto.AutoModelForQuestionAnswering, DepthAttnForQuestionAnswering)):
        auto_class.register(DepthAttnConfig, model_class, exist_ok=True)


# Registered here too: an Auto module imported while this module was loading left it to us
# (depthattn.hf.auto).
register_models()
