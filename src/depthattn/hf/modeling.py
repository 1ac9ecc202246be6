"""``DepthAttnForCausalLM``: the core decoder as a Hugging Face ``PreTrainedModel``.

No second copy of the model (architecture decision 1): ``self.model`` is the core ``Decoder``
and ``self.lm_head`` the same ``nn.Linear`` as in ``CausalLM``, so parameter names are Qwen3's
(``model.embed_tokens.weight``, ..., ``lm_head.weight``). ``generate`` runs the core
``depthattn.generation.generate`` with our ``KVCache`` (which stores Depth-Attention's mixed
values) after mapping the ``GenerationConfig``; options it does not implement are refused by name.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from depthattn.generation import generate as core_generate
from depthattn.hf.configuration import DepthAttnConfig
from depthattn.model.cache import KVCache
from depthattn.model.transformer import CausalLM, Decoder, lm_logits

# GenerationConfig fields that core generation implements.
SUPPORTED_GENERATION = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k",
                        "top_p", "eos_token_id", "pad_token_id", "bos_token_id", "use_cache")
_NOT_OPTIONS = {"transformers_version", "_from_model_config", "decoder_start_token_id",
                "generation_mode", "cache_implementation", "compile_config"}


class DepthAttnPreTrainedModel(PreTrainedModel):
    config_class = DepthAttnConfig
    config: DepthAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

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

    # --- the core model, sharing these modules -----------------------------------------------
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

    # --- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                past_key_values: KVCache | None = None,
                labels: torch.Tensor | None = None,
                use_cache: bool | None = None,
                logits_to_keep: int = 0,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """input_ids (B, T) → logits (B, T, V); ``loss`` (next-token cross-entropy, -100 ignored)
        when ``labels`` are given. ``past_key_values`` may be a core ``KVCache`` (appended to);
        other Hugging Face cache objects are refused."""
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("pass input_ids (inputs_embeds is not supported)")
        if past_key_values is not None and not isinstance(past_key_values, KVCache):
            raise ValueError(f"past_key_values must be a depthattn KVCache (it stores "
                             f"Depth-Attention's mixed values), not "
                             f"{type(past_key_values).__name__}")
        logits = lm_logits(self.model, self.lm_head, input_ids, attention_mask, past_key_values,
                           position_ids, logits_to_keep)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None,
                 attention_mask: torch.Tensor | None = None, streamer: Any = None,
                 generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """Hugging Face's ``generate`` signature on our cached decoding: greedy or sampling
        (temperature, top_k, top_p), ``max_new_tokens``/``max_length``, EOS and pad ids,
        left-padded batches (``attention_mask``), a streamer with ``put()``/``end()``.
        Returns (B, T + generated) token ids; finished rows are filled with the pad id."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ValueError("generate needs input_ids (B, T)")
        config = copy.deepcopy(generation_config or self.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise ValueError(f"generate got unsupported argument(s) {', '.join(sorted(unused))}; "
                             f"supported: {', '.join(SUPPORTED_GENERATION)}, attention_mask, "
                             f"streamer, generator")
        options = _resolve_generation_options(config, input_ids.shape[1])
        limit = self.core_config.max_seq_len
        if input_ids.shape[1] + options["max_new_tokens"] > limit:  # before anything streams
            raise ValueError(f"prompt length ({input_ids.shape[1]}) + max_new_tokens "
                             f"({options['max_new_tokens']}) exceeds max_seq_len ({limit})")
        if attention_mask is None and options["pad_token_id"] is not None:
            # as Hugging Face: pad tokens in the prompt are padding unless pad is also EOS
            eos = options["eos_token_id"]
            eos = [eos] if isinstance(eos, int) else (eos or [])
            pad = options["pad_token_id"]
            if pad not in eos and bool((input_ids == pad).any()):
                attention_mask = (input_ids != pad).long()
        if attention_mask is not None:
            _check_left_padded(attention_mask)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            return core_generate(
                self.core(), input_ids, attention_mask=attention_mask,
                generator=generator,
                streamer=None if streamer is None else (lambda token: streamer.put(token.cpu())),
                **options)
        finally:
            if streamer is not None:
                streamer.end()


def _resolve_generation_options(config: GenerationConfig, prompt_len: int) -> dict[str, Any]:
    defaults = GenerationConfig._get_default_generation_params()
    unsupported = []
    for key, value in config.to_diff_dict().items():
        if key in SUPPORTED_GENERATION or key in _NOT_OPTIONS:
            continue
        if key not in defaults and not value:
            continue  # an off switch (output_attentions=False, ...) asks for nothing
        if value is not None and value != defaults.get(key, None):
            unsupported.append(f"{key}={value!r}")
    if unsupported:
        raise ValueError(f"generation option(s) {', '.join(sorted(unsupported))} are not "
                         f"supported by depthattn generate; supported: "
                         f"{', '.join(SUPPORTED_GENERATION)}")

    def get(key: str) -> Any:
        value = getattr(config, key, None)
        return defaults.get(key) if value is None else value

    max_new = config.max_new_tokens
    if max_new is None:
        max_new = max(0, get("max_length") - prompt_len)
    top_k = get("top_k")
    top_p = get("top_p")
    return dict(max_new_tokens=int(max_new), do_sample=bool(get("do_sample")),
                temperature=float(get("temperature")), top_k=top_k or None,
                top_p=None if top_p is None or top_p >= 1 else float(top_p),
                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)


def _check_left_padded(attention_mask: torch.Tensor) -> None:
    mask = attention_mask.bool()
    # left padding: once a row has a real token, every later token is real
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError("attention_mask has padding after a real token (right padding); "
                         "generate needs left-padded prompts (tokenizer.padding_side = 'left')")
