"""Generation with the KV cache: (chunked) prefill, then one token per step, each chosen
greedily or sampled (temperature, top-k, top-p).

Each step runs all layers for the new token only; Depth-Attention's sources come from the
per-call depth stash, so the only state kept across steps is the (vanilla-sized) cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from depthattn.model.cache import DecoderCache, KVCache, StaticKVCache
from depthattn.model.decoder import CausalLM
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise DepthAttnError(f"temperature ({temperature!r}) must be > 0 (use do_sample=False for "
                             f"greedy decoding)")
    if top_k is not None:
        require_int("top_k", top_k, 1, hint=" or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise DepthAttnError(f"top_p ({top_p!r}) must be in (0, 1] or None")


def next_token(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) → token ids (B,)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def decode_step(model: CausalLM, token: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
    """One token per row (B, 1) through the model into the cache → next logits (B, V)."""
    return model(token, cache=cache)[:, -1]


@functools.cache
def compiled_decode_step(device: torch.device) -> Callable:
    """``decode_step`` compiled once per device type: a whole graph (no breaks), static shapes;
    on CUDA replayed as a CUDA graph (``reduce-overhead``)."""
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    return torch.compile(decode_step, fullgraph=True, dynamic=False, mode=mode)


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """All rows advance together, so a prompt's padding must come first: once a row has a
    real token, every later token is real."""
    mask = attention_mask.bool()
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise DepthAttnError("attention_mask has padding after a real token (right padding); "
                             "generate needs left-padded prompts (tokenizer.padding_side = 'left')")


@torch.no_grad()
def prefill(model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            cache: DecoderCache, chunk_size: int | None = None) -> torch.Tensor:
    """Run the prompt through the model into ``cache``; return the last position's logits (B, V)."""
    T = input_ids.shape[1]
    step = T if chunk_size is None else chunk_size
    for start in range(0, T, step):
        chunk_mask = None if attention_mask is None else attention_mask[:, start:start + step]
        logits = model(input_ids[:, start:start + step], attention_mask=chunk_mask, cache=cache,
                       logits_to_keep=1)  # (B, 1, V): the (B, T, V) logits would be wasted
    return logits[:, -1]


@torch.no_grad()
def generate(model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 16, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None, prefill_chunk_size: int | None = None,
             streamer: Callable[[torch.Tensor], None] | None = None,
             kv_format: str | None = None, compile: bool = False) -> torch.Tensor:
    """Continue left-padded prompts (B, T); returns (B, T + generated) token ids.

    Rows that emitted an EOS are filled with ``pad_token_id`` (default: the first EOS id, else 0)
    until every row is done or ``max_new_tokens`` are generated. ``streamer`` is called with
    each new column of tokens (B,). ``kv_format``: how the cache stores keys and values
    (None: the model's dtype; "bfloat16", "float8_e4m3", "int8": see depthattn.ops.kv_quant).
    ``compile``: decode with a ``StaticKVCache`` and a ``torch.compile``d step (one graph for
    every position, CUDA graphs on GPU); the prefill runs eagerly. Same tokens as without.
    """
    if not isinstance(compile, bool):
        raise DepthAttnError(f"compile ({compile!r}) must be True or False")
    require_int("max_new_tokens", max_new_tokens, 0)
    if prefill_chunk_size is not None:
        require_int("prefill_chunk_size", prefill_chunk_size, 1, hint=" or None")
    if do_sample:
        check_sampling_options(temperature, top_k, top_p)
    if attention_mask is not None:
        check_left_padded(attention_mask)
    B, T = input_ids.shape
    limit = model.config.max_seq_len
    if T + max_new_tokens > limit:
        raise DepthAttnError(f"prompt length ({T}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_seq_len ({limit})")
    if max_new_tokens == 0:
        return input_ids
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []),
                       device=input_ids.device, dtype=torch.long)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

    cache_class = StaticKVCache if compile else KVCache
    cache = cache_class.for_model(model, B, T + max_new_tokens, kv_format=kv_format)
    logits = prefill(model, input_ids, attention_mask, cache, prefill_chunk_size)
    step_fn = compiled_decode_step(input_ids.device) if compile else decode_step
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    generated = []
    for step in range(max_new_tokens):
        token = next_token(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(done, pad)
        generated.append(token)
        if streamer is not None:
            streamer(token)
        done |= torch.isin(token, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = step_fn(model, token[:, None], cache)
    return torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1)
