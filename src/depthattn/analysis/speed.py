"""Training and decoding speed of cross-layer methods, each next to vanilla's from the same pass:
the measured columns of the comparison table, beside the closed-form costs of ``cost.py``.

- training: tokens/s of one forward + backward of the training loss (``CausalLM.loss``), no
  optimizer step;
- activation memory: the bytes autograd keeps for backward in that step (unique storages seen by
  a saved-tensors hook: the same measure on CPU and GPU);
- decoding: tokens/s of single-token cached steps after a prefill, at each batch size.

``measure_speeds`` runs every method in one pass: within each round the methods are interleaved
(each quantity in turn for every method), each time is the median over the rounds, and each ratio
is the method's median against vanilla's from the same pass. Used by ``benchmarks/methods.py`` and
``benchmarks/decode.py`` too.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from depthattn.model.cache import KVCache, StaticKVCache
from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.model.generate import compiled_decode_step, decode_step
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

DECODE_MODES = ("eager", "compiled")
BASELINE = "vanilla"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_loss(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    """The next-token training loss on ``ids`` (B, T), each row's last target its first token."""
    return model.loss(ids, ids.roll(-1, dims=1))


def saved_activation_bytes(model: CausalLM, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of ``step_loss``: unique storages, each whole."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_loss(model, ids)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def train_step_seconds(model: CausalLM, ids: torch.Tensor) -> float:
    """Wall time of one forward + backward of ``step_loss`` (gradients dropped after)."""
    device = ids.device
    _synchronize(device)
    start = time.perf_counter()
    step_loss(model, ids).backward()
    _synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


@torch.no_grad()
def decode_seconds(model: CausalLM, batch: int, context: int, new: int,
                   device: torch.device | str, mode: str = "eager") -> float:
    """Seconds per single-token step: prefill ``context`` random tokens for ``batch`` rows, then
    time ``new`` greedy steps. ``eager``: the growing ``KVCache``; ``compiled``: the
    ``StaticKVCache`` and the ``torch.compile``d step of ``generate(..., compile=True)`` (call
    once untimed first: the first call compiles)."""
    if mode not in DECODE_MODES:
        raise DepthAttnError(f"decode mode ({mode!r}) must be one of {', '.join(DECODE_MODES)}")
    device = torch.device(device)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    compiled = mode == "compiled"
    cache = (StaticKVCache if compiled else KVCache).for_model(model, batch, context + new)
    step = compiled_decode_step(device) if compiled else decode_step
    logits = model(ids, cache=cache, logits_to_keep=1)[:, -1]
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(new):
        logits = step(model, logits.argmax(-1, keepdim=True), cache)
    _synchronize(device)
    return (time.perf_counter() - start) / new


@dataclass(frozen=True)
class MethodSpeed:
    """One method's measured speeds; every ratio is against vanilla in the same pass."""

    label: str
    train_tokens_per_s: float  # forward + backward, median over rounds
    train_ratio: float  # > 1: faster than vanilla
    activation_bytes: int  # saved for backward in one step
    activation_ratio: float  # > 1: more memory than vanilla
    decode_tokens_per_s: Mapping[int, float]  # batch size → tokens/s (rows × steps per second)
    decode_ratio: Mapping[int, float]  # batch size → ÷ vanilla's tokens/s (> 1: faster)


def _configs(config: ModelConfig, methods: Sequence[str] | Mapping[str, ModelConfig],
             max_len: int) -> dict[str, ModelConfig]:
    """label → config, vanilla first, each admitting ``max_len`` positions (RoPE has no table
    to outgrow)."""
    if isinstance(methods, Mapping):
        configs = dict(methods)
    else:
        configs = {name: config.with_method(name) for name in methods}
    if not configs:
        raise DepthAttnError("measure_speeds needs at least one method")
    base = configs.pop(BASELINE, config.with_method(BASELINE))
    configs = {BASELINE: base, **configs}
    return {label: dataclasses.replace(c, max_seq_len=max(c.max_seq_len, max_len))
            for label, c in configs.items()}


def measure_speeds(config: ModelConfig, methods: Sequence[str] | Mapping[str, ModelConfig],
                   rounds: int = 3, *, batch_size: int = 4, seq_len: int = 256,
                   decode_batches: Sequence[int] = (1, 32), context: int = 1024,
                   new_tokens: int = 32, decode_mode: str = "eager",
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   seed: int = 0) -> dict[str, MethodSpeed]:
    """Training tokens/s, activation bytes and decoding tokens/s of each method, with ratios to
    vanilla, measured in one pass (see the module docstring).

    Args:
        config: the geometry (its method is ignored).
        methods: registered names, each run with default options on ``config``'s geometry; or
            label → full ``ModelConfig`` (e.g. non-default options). Vanilla is always measured,
            under the label "vanilla", and comes first.
        rounds: timed rounds (>= 3 for a median), after one untimed warm-up round.
        batch_size, seq_len: the training step's batch (tokens/s counts batch_size × seq_len).
        decode_batches: the batch sizes decoded; context: the prefilled tokens; new_tokens: the
            timed steps per round.
        decode_mode: "eager" (``KVCache``) or "compiled" (``generate(..., compile=True)``'s step).
        device: default CUDA when available, else CPU. dtype: default the models' float32.

    Every model is built once and stays on ``device`` for the whole pass (interleaving needs
    them all): plan memory for len(methods) + 1 models, one decoding cache at a time.

    Example:
        >>> speeds = measure_speeds(ModelConfig.from_preset("tiny"), ["depth_attention"],
        ...                         seq_len=32, context=32, new_tokens=4, decode_batches=(1,))
        >>> list(speeds), speeds["vanilla"].train_ratio
        (['vanilla', 'depth_attention'], 1.0)
    """
    require_int("rounds", rounds, 1, hint=" (3 or more for a median)")
    require_int("batch_size", batch_size, 1)
    require_int("seq_len", seq_len, 1)
    require_int("context", context, 1)
    require_int("new_tokens", new_tokens, 1)
    for b in decode_batches:
        require_int("decode batch size", b, 1)
    if decode_mode not in DECODE_MODES:
        raise DepthAttnError(f"decode_mode ({decode_mode!r}) must be one of "
                             f"{', '.join(DECODE_MODES)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    configs = _configs(config, methods, max(seq_len, context + new_tokens))
    models: dict[str, CausalLM] = {}
    for label, c in configs.items():
        torch.manual_seed(seed)
        models[label] = CausalLM(c).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    activation = {label: saved_activation_bytes(model.train(), ids)
                  for label, model in models.items()}

    train: dict[str, list[float]] = {label: [] for label in models}
    decode: dict[tuple[str, int], list[float]] = {(label, b): [] for label in models
                                                  for b in decode_batches}
    for r in range(rounds + 1):  # round 0 warms up (and compiles, in compiled mode)
        for label, model in models.items():
            seconds = train_step_seconds(model.train(), ids)
            if r:
                train[label].append(seconds)
        for b in decode_batches:
            for label, model in models.items():
                seconds = decode_seconds(model.eval(), b, context, new_tokens, device,
                                         decode_mode)
                if r:
                    decode[label, b].append(seconds)

    train_tps = {label: batch_size * seq_len / statistics.median(t) for label, t in train.items()}
    decode_tps = {key: key[1] / statistics.median(t) for key, t in decode.items()}
    return {label: MethodSpeed(
        label=label, train_tokens_per_s=train_tps[label],
        train_ratio=train_tps[label] / train_tps[BASELINE],
        activation_bytes=activation[label],
        activation_ratio=activation[label] / activation[BASELINE],
        decode_tokens_per_s={b: decode_tps[label, b] for b in decode_batches},
        decode_ratio={b: decode_tps[label, b] / decode_tps[BASELINE, b] for b in decode_batches})
        for label in models}


def format_speed_table(speeds: Mapping[str, MethodSpeed]) -> str:
    """One row per method: tokens/s and ratios to vanilla."""
    batches = sorted({b for s in speeds.values() for b in s.decode_tokens_per_s})
    head = ["method", "train tok/s", "÷vanilla", "activ. MiB", "÷vanilla"]
    for b in batches:
        head += [f"decode b{b} tok/s", "÷vanilla"]
    rows = [head]
    for s in speeds.values():
        row = [s.label, f"{s.train_tokens_per_s:,.0f}", f"{s.train_ratio:.3f}",
               f"{s.activation_bytes / 2**20:,.1f}", f"{s.activation_ratio:.3f}"]
        for b in batches:
            row += [f"{s.decode_tokens_per_s[b]:,.0f}", f"{s.decode_ratio[b]:.3f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


__all__ = ["DECODE_MODES", "MethodSpeed", "decode_seconds", "format_speed_table",
           "measure_speeds", "saved_activation_bytes", "step_loss", "train_step_seconds"]
