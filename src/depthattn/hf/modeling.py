"""``DepthAttnForCausalLM``: the core decoder as a Hugging Face ``PreTrainedModel`` (docs/design.md).

No second copy of the model: ``self.model`` is the core ``Decoder`` and ``self.lm_head`` the
same ``nn.Linear`` as in ``CausalLM``, so parameter names are Qwen3's. ``forward`` takes
``Qwen3ForCausalLM.forward``'s arguments; ``generate`` is transformers' own, with our cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from depthattn.hf.cache import DepthAttnCache, DepthAttnStaticCache, static_padding_mask
from depthattn.hf.configuration import DepthAttnConfig
from depthattn.model.cache import KVCache, StaticKVCache
from depthattn.model.decoder import CausalLM, Decoder
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

# transformers 5.24 renamed `past_key_values` to `cache` (keeping the old name as an alias);
# the output field and generate's keyword follow the installed version.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ \
    else "past_key_values"
# keywords transformers passes to forward that need nothing from us (loss options, and the
# slots generate tracks, which the cache knows: checked, not used)
LOSS_KWARGS = ("num_items_in_batch", "ignore_index")
IGNORED_KWARGS = ("cache_position",)
OUR_CACHES = (DepthAttnCache, DepthAttnStaticCache, KVCache, StaticKVCache)


class DepthAttnPreTrainedModel(PreTrainedModel):
    config_class = DepthAttnConfig
    config: DepthAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """As ``CausalLM.init_weights``: N(0, init_std²) for linears and embeddings, then each
        other module's own ``reset_parameters`` (norm gains, RoPE table, a method's own init).
        Hugging Face applies this children first, so a method module has the last word."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        elif module is not self and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class DepthAttnForCausalLM(DepthAttnPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DepthAttnConfig) -> None:
        super().__init__(config)
        self.core_config = config.to_model_config()
        self.model = Decoder(self.core_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def core(self) -> CausalLM:
        """A ``CausalLM`` whose ``model`` and ``lm_head`` ARE this model's modules (no copy), for
        the core API: ``generate``, ``KVCache.for_model``, ``capture_depth_weights``..."""
        return CausalLM.from_modules(self.core_config, self.model, self.lm_head)

    @classmethod
    def from_core(cls, model: CausalLM, **config_kwargs: Any) -> DepthAttnForCausalLM:
        """Wrap a core ``CausalLM``: the Hugging Face model takes over its modules (no copy)."""
        config = DepthAttnConfig.from_model_config(model.config, **config_kwargs)
        with torch.device("meta"):
            wrapper = cls(config)
        wrapper.model = model.model
        wrapper.lm_head = model.lm_head
        return wrapper.train(model.training)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize, then the core config follows (the new ids are accepted at once)."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.core_config = self.config.to_model_config()
        self.model.config = self.core_config
        return embeddings

    def set_loop_iterations(self, iterations: int) -> None:
        """Test-time depth of a looped model (``Decoder.set_loop_iterations``); the Hugging Face
        config follows, so that save_pretrained and new caches see the new L_eff."""
        self.model.set_loop_iterations(iterations)
        self.config.loop_iterations = iterations
        self.core_config = self.model.config

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
                past_key_values: DepthAttnCache | KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                use_cache: bool | None = None,
                output_attentions: bool | None = None,
                output_hidden_states: bool | None = None,
                return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0,
                cache: DepthAttnCache | KVCache | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        """``Qwen3ForCausalLM.forward``: input_ids (B, T) or inputs_embeds (B, T, D) → logits;
        ``loss`` (shifted cross-entropy, -100 ignored) with ``labels``. attention_mask: (B, T),
        or (B, past + T) with a cache, 0 at padding. ``past_key_values`` (``cache`` in
        transformers >= 5.24): a ``DepthAttnCache`` (or a core ``KVCache``), appended to; with
        ``use_cache`` (default: the config's, off while checkpointing activations in training)
        and none given, a new one is returned. ``output_hidden_states``: Qwen3's L + 1 states."""
        if output_attentions if output_attentions is not None else self.config.output_attentions:
            raise DepthAttnError("output_attentions=True is not supported: attention runs in "
                                 "PyTorch's scaled_dot_product_attention, which returns no weights")
        unknown = sorted(set(kwargs) - set(LOSS_KWARGS) - set(IGNORED_KWARGS))
        if unknown:
            raise DepthAttnError(f"forward got unexpected argument(s) {', '.join(unknown)}")
        if cache is not None and past_key_values is not None:
            raise DepthAttnError("pass the cache as past_key_values or as cache, not both")
        cache = past_key_values if cache is None else cache
        if cache is not None and not isinstance(cache, OUR_CACHES):
            raise DepthAttnError(f"the cache must be a DepthAttnCache (depthattn.hf.DepthAttnCache: "
                                 f"it stores Depth-Attention's mixed values and the padding), not "
                                 f"{type(cache).__name__}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise DepthAttnError(f"attention_mask must be the 2-D (batch, seq) padding mask, got "
                                 f"shape {tuple(attention_mask.shape)}")
        checkpointing = self.model.activation_checkpointing and self.training \
            and torch.is_grad_enabled()
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not checkpointing
        if cache is None and use_cache:
            cache = DepthAttnCache(self.config)
        _check_cache_position(kwargs.get("cache_position"), cache,
                              (input_ids if input_ids is not None else inputs_embeds).shape[1])
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        states: list[torch.Tensor] | None = [] if output_hidden_states else None

        hidden = self.model(input_ids, attention_mask, cache, position_ids,
                            inputs_embeds=inputs_embeds, hidden_states=states)  # (B, T, D)
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]  # positions to keep
        else:
            require_int("logits_to_keep", logits_to_keep, 0)
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss_kwargs = {k: v for k, v in kwargs.items() if k in LOSS_KWARGS}
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **loss_kwargs)
        output = CausalLMOutputWithPast(loss=loss, logits=logits,
                                        hidden_states=None if states is None else tuple(states),
                                        **{CACHE_FIELD: cache})
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
                                                         self.dtype)
            elif isinstance(made, Cache):
                raise DepthAttnError(f"cache_implementation="
                                     f"{generation_config.cache_implementation!r} is not "
                                     f"supported: "
                                     f"depthattn models decode with their DepthAttnCache; leave "
                                     f"cache_implementation unset")
        return result

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func: Callable = checkpoint,
                                    every_n_layers: int = 1) -> None:
        """``gradient_checkpointing_enable()`` / ``activation_checkpointing_enable()`` land here:
        the core decoder recomputes every ``every_n_layers``-th block in backward, through the
        function transformers built (its kwargs, CPU offload)."""
        require_int("every_n_layers", every_n_layers, 1)
        keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
        if enable and keywords.get("use_reentrant", False):
            raise DepthAttnError("use_reentrant=True is not supported: Depth-Attention's sources "
                                 "reach later layers outside the checkpointed arguments, so "
                                 "reentrant checkpointing would drop their gradients; use "
                                 "gradient_checkpointing_kwargs={'use_reentrant': False} (the "
                                 "default)")
        if gradient_checkpointing_func is checkpoint:  # bare: torch asks for use_reentrant
            gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        self.model.activation_checkpointing = enable
        self.model.checkpoint_every = every_n_layers
        if enable:
            self.model.checkpoint_function = gradient_checkpointing_func
        else:
            self.model.__dict__.pop("checkpoint_function", None)  # back to the class default


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
