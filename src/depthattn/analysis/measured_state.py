"""Per-token state measured on a real model: what the closed forms of ``analysis/cost.py``
(``MethodCost.inflight_state_per_token``, the KV cache of ``backbone_cost``) claim, read from the
tensors a forward really keeps (docs/baselines.md §11).

- **In flight** (``measure_inflight_state``): one prefill forward into a ``KVCache``. After the
  stream begins (``init_stream``) and after every sublayer writes back (``write``), the state
  the method carries to the next sublayer is read: every tensor reachable from the stream object
  it returns and from the method's entries in the call's ``ForwardContext`` (the depth stash,
  value residual's shares: every field the decoder does not set itself). Unique storages are
  counted, in elements per token, and the widest point is reported. Tensors that are the token's
  own KV-cache entries — the very (k, ṽ) a layer hands to ``cache.update`` and also stashes for
  later layers (Depth-Attention's sources, value residual's v₀) — are the cache's, not state
  beyond it ("reuses the standard ... value-cache slots", paper abstract; docs/method.md §8); they
  are reported apart, as ``kv_entries_per_token``. Counted element by element: where the cache
  is handed a view of a stashed tensor, only the viewed elements are the cache's (an MLA
  layer under Depth-Attention's ``values`` rule caches c̃ of its stashed entry [c̃ ; k̃^R],
  not k̃^R; docs/method.md §9).
- **Persistent** (``measure_persistent_state``): prefill a context into a ``KVCache`` sized to
  it, decode one token, then count the bytes of every tensor reachable from the cache and the
  model — what a decoding loop carries to its next step. Done at two context lengths and
  differenced, so the parameters and anything of fixed size cancel; divided by the tokens and
  rows between them.

What is not counted: tensors that live only inside one hook or one sublayer (the branch input,
HC's maps between ``read`` and ``write``, a DWA's accumulator) — they are not carried from one
sublayer to the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from depthattn.model.cache import KVCache
from depthattn.model.decoder import CausalLM
from depthattn.model.generate import decode_step, prefill
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

# ForwardContext fields the decoder sets for every call (RoPE tables, masks, the cache, the
# schedule, the attention function's keywords). Every other field is a method's and is counted.
DECODER_CONTEXT_FIELDS = frozenset({"cos", "sin", "attn_mask", "window_mask", "is_causal",
                                    "cache", "attention_kwargs", "attention_weights",
                                    "applications"})


# --- finding the tensors an object keeps alive -------------------------------------------------
def _walk(obj: Any, path: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor reachable from ``obj`` through containers, dataclasses and
    the attributes of this package's and torch.nn's objects (modules, caches, stream states)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _walk(value, f"{path}.{key}", seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:  # list indices collapsed: keys[0] and keys[5] are both "keys"
            yield from _walk(value, path, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from _walk(getattr(obj, field.name), f"{path}.{field.name}", seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("depthattn", "torch.nn")):
        for name, value in vars(obj).items():
            if isinstance(obj, nn.Module) and name in ("_parameters", "_buffers", "_modules"):
                yield from _walk(value, path, seen)  # "layers.0.mlp", not "_modules.layers..."
            else:
                yield from _walk(value, f"{path}.{name}", seen)


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def storages(obj: Any, path: str = "") -> dict[tuple[str, int], tuple[str, torch.Tensor]]:
    """The unique storages reachable from ``obj``: key → (first path it was reached by, a
    tensor on it)."""
    found: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}
    for where, t in _walk(obj, path, set()):
        found.setdefault(_storage_key(t), (where.lstrip("."), t))
    return found


def _elements(t: torch.Tensor) -> int:
    """Elements of ``t``'s whole storage (a view keeps all of it alive)."""
    return t.untyped_storage().nbytes() // t.element_size()


def _covered(t: torch.Tensor, views: list[torch.Tensor]) -> int:
    """Elements of ``t``'s storage that at least one of ``views`` (tensors on it) covers."""
    if not views:
        return 0
    covered = torch.zeros(_elements(t), dtype=torch.bool)
    for view in views:
        covered.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(True)
    return int(covered.sum())


@contextlib.contextmanager
def _wrapped(obj: Any, name: str, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """``obj.name`` replaced by ``wrap(obj.name)`` on this instance, restored on exit."""
    original = getattr(obj, name)
    setattr(obj, name, wrap(original))
    try:
        yield
    finally:
        delattr(obj, name)  # the class's method shows through again


# --- in flight ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class InflightState:
    """The depth state a method carries between sublayers, per token, at its widest point."""

    per_token: int  # elements: stream + the method's context entries, beyond the token's KV entries
    kv_entries_per_token: int  # elements of stashed tensors that are the token's KV-cache entries
    widest: str  # where the widest point was, e.g. "layer 5 attn" or "embedding"
    parts: Mapping[str, int]  # at the widest point: path → elements per token

    def vs_kv_cache(self, kv_cache_per_token: int) -> float:
        """The comparison column: ÷ the KV cache per token (``backbone_cost(config)``)."""
        return self.per_token / kv_cache_per_token


@torch.no_grad()
def measure_inflight_state(model: CausalLM, batch_size: int = 2, seq_len: int = 8,
                           seed: int = 0) -> InflightState:
    """Run one prefill of ``batch_size`` × ``seq_len`` random tokens and read, after every
    stream hook, what the method keeps (see the module docstring)."""
    require_int("batch_size", batch_size, 1)
    require_int("seq_len", seq_len, 1)
    config, method = model.config, model.model.cross_layer
    device = model.lm_head.weight.device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    tokens = batch_size * seq_len
    cache = KVCache.for_model(model, batch_size, seq_len)
    # The (k, ṽ) handed to the cache this call, by storage: the tensors (views, maybe) on it. They
    # are held so that no later tensor can reuse a freed address and pass for one of them.
    kv_entries: dict[tuple[str, int], list[torch.Tensor]] = {}
    widest: dict[str, Any] = {"per_token": -1, "kv": 0}

    def record_update(update: Callable) -> Callable:
        def recording(key: torch.Tensor, value: torch.Tensor, layer_idx: int):
            for t in (key, value):
                kv_entries.setdefault(_storage_key(t), []).append(t)
            return update(key, value, layer_idx)
        return recording

    def sample(stream: Any, ctx: Any, where: str) -> None:
        held = {name: value for name, value in vars(ctx).items()
                if name not in DECODER_CONTEXT_FIELDS}
        found = storages({"stream": stream, "context": held})
        parts: dict[str, int] = {}
        kv = 0
        for key, (path, t) in found.items():
            n = _elements(t)
            cached = _covered(t, kv_entries.get(key, ()))
            if n % tokens or cached % tokens:
                raise DepthAttnError(f"{path}: a storage of {n} elements ({cached} of them "
                                     f"cached) is not per token ({batch_size} × {seq_len} "
                                     f"tokens); the state of {config.method} cannot be counted "
                                     f"per token")
            kv += cached // tokens
            if n > cached:
                parts[path] = parts.get(path, 0) + (n - cached) // tokens
        total = sum(parts.values())
        if total > widest["per_token"]:
            widest.update(per_token=total, where=where, parts=parts)
        widest["kv"] = max(widest["kv"], kv)

    def record_init(init_stream: Callable) -> Callable:
        def recording(embeddings: torch.Tensor, ctx: Any) -> Any:
            stream = init_stream(embeddings, ctx)
            sample(stream, ctx, "embedding")
            return stream
        return recording

    def record_write(write: Callable) -> Callable:
        def recording(stream: Any, layer_idx: int, sublayer: str, output: torch.Tensor,
                      ctx: Any) -> Any:
            stream = write(stream, layer_idx, sublayer, output, ctx)
            sample(stream, ctx, f"layer {layer_idx} {sublayer}")
            return stream
        return recording

    with _wrapped(cache, "update", record_update), \
            _wrapped(method, "init_stream", record_init), \
            _wrapped(method, "write", record_write):
        model(ids, cache=cache)
    return InflightState(per_token=widest["per_token"], kv_entries_per_token=widest["kv"],
                         widest=widest["where"], parts=widest["parts"])


def inflight_state_per_token(model: CausalLM, batch_size: int = 2, seq_len: int = 8) -> int:
    """Measured in-flight depth state, elements per token (``measure_inflight_state``)."""
    return measure_inflight_state(model, batch_size, seq_len).per_token


# --- persistent --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersistentState:
    """Bytes carried from one decoding step to the next that grow with the context, per token
    and row."""

    bytes_per_token: float  # everything
    kv_bytes_per_token: float  # the cache's key and value buffers (``KVCache.nbytes``)
    parts: Mapping[str, float]  # path ("cache.keys", "cache.record.valid", ...) → bytes per token

    @property
    def beyond_kv_bytes_per_token(self) -> float:
        return self.bytes_per_token - self.kv_bytes_per_token

    def vs_kv_cache(self, kv_cache_bytes_per_token: int) -> float:
        """÷ the KV cache per token in bytes (``CostReport.kv_cache_bytes_per_token``)."""
        return self.bytes_per_token / kv_cache_bytes_per_token


def _carried(model: CausalLM, context: int, batch_size: int,
             seed: int) -> tuple[dict[str, int], int]:
    """Prefill ``context`` − 1 tokens, decode one: the bytes reachable from the cache and the
    model then, by path, and the cache's own account of its key and value buffers."""
    device = model.lm_head.weight.device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, context), generator=gen)
    ids = ids.to(device)
    cache = KVCache.for_model(model, batch_size, context)
    prefill(model, ids[:, :-1], None, cache)
    with torch.no_grad():
        decode_step(model, ids[:, -1:], cache)
    if cache.length != context:
        raise DepthAttnError(f"the cache holds {cache.length} tokens after the step, not {context}")
    by_path: dict[str, int] = {}
    for path, t in storages({"cache": cache, "model": model}).values():
        by_path[path] = by_path.get(path, 0) + t.untyped_storage().nbytes()
    return by_path, cache.nbytes


def measure_persistent_state(model: CausalLM, contexts: tuple[int, int] = (8, 24),
                             batch_size: int = 2, seed: int = 0) -> PersistentState:
    """What a decoding loop carries between steps, per token: counted at two context lengths
    (each a prefill of all but the last token, then one decode step) and differenced."""
    short, long = contexts
    require_int("contexts[0]", short, 2)
    require_int("contexts[1]", long, short + 1, hint=f" (more than contexts[0] = {short})")
    if long > model.config.max_seq_len:
        raise DepthAttnError(f"contexts[1] ({long}) exceeds max_seq_len "
                             f"({model.config.max_seq_len})")
    require_int("batch_size", batch_size, 1)
    before, kv_before = _carried(model, short, batch_size, seed)
    after, kv_after = _carried(model, long, batch_size, seed)
    per = (long - short) * batch_size
    parts = {path: (after.get(path, 0) - before.get(path, 0)) / per
             for path in sorted(set(before) | set(after))}
    parts = {path: b for path, b in parts.items() if b}
    return PersistentState(bytes_per_token=sum(parts.values()),
                           kv_bytes_per_token=(kv_after - kv_before) / per, parts=parts)


def persistent_state_per_token(model: CausalLM, contexts: tuple[int, int] = (8, 24),
                               batch_size: int = 2) -> float:
    """Measured persistent state, bytes per token and row (``measure_persistent_state``)."""
    return measure_persistent_state(model, contexts, batch_size).bytes_per_token


__all__ = ["DECODER_CONTEXT_FIELDS", "InflightState", "PersistentState",
           "inflight_state_per_token", "measure_inflight_state", "measure_persistent_state",
           "persistent_state_per_token", "storages"]
