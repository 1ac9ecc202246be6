"""`depthattn demo`: Depth-Attention on the tiny preset, next to vanilla with the same weights.

Forward, cached decoding checked against the full forward, one token's depth weights, cache
sizes. The weights are random: this shows the mechanics, not a trained model. A looped geometry
mixes over applications e, not layers (docs/method.md §7), and is labelled so.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from depthattn.analysis.depth_weights import capture_depth_weights
from depthattn.model import CausalLM, KVCache
from depthattn.model.config import ModelConfig
from depthattn.model.generate import generate
from depthattn.model.looped import Application, applications
from depthattn.utils.errors import DepthAttnError


def _forward_seconds(model: CausalLM, ids: torch.Tensor, repeats: int) -> float:
    model(ids)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model(ids)
    return (time.perf_counter() - start) / repeats


def _row_label(app: Application, looped: bool) -> str:
    """`layer  3` for a plain model; `e  5 (layer 2, iteration 1)` or `e 7 (layer 3, coda)`
    for a looped one."""
    if not looped:
        return f"layer {app.index:2d}"
    if app.iteration is not None:
        where = f"iteration {app.iteration}"
    else:
        where = "prelude" if app.layer < app.first_looped_layer else "coda"
    return f"e {app.index:2d} (layer {app.layer}, {where})"


@torch.no_grad()
def run_demo(preset: str = "tiny", seq_len: int = 256, new_tokens: int = 8, seed: int = 0,
             stride: int | None = None, recent_window: int = 0,
             sources: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """``sources``: a looped model's source rule (``applications`` or ``recurrent``; None: the
    method's default). ``overrides``: ModelConfig fields over the preset, e.g. a looped geometry
    ``{"prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3}``."""
    overrides = dict(overrides or {})
    for fixed in ("method", "method_options"):
        if fixed in overrides:
            raise DepthAttnError(f"the demo's model override {fixed}={overrides[fixed]!r} is not "
                                 f"allowed: it always runs depth_attention next to vanilla (set "
                                 f"--stride, --recent-window and --sources instead)")
    torch.manual_seed(seed)
    options: dict[str, Any] = {"stride": stride, "recent_window": recent_window}
    if sources is not None:
        options["sources"] = sources
    config = ModelConfig.from_preset(preset, **overrides, method="depth_attention",
                                     method_options=options)
    depth = CausalLM(config).eval()
    vanilla = CausalLM(config.with_method("vanilla")).eval()
    vanilla.load_state_dict(depth.state_dict(), strict=True)  # zero new parameters
    opts = config.method_options
    print(f"preset {preset}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"heads {config.num_heads}/{config.num_kv_heads} (q/kv), head_dim {config.head_dim}")
    if config.looped:
        c = config.num_layers - config.prelude_layers - config.loop_layers
        print(f"looped: prelude {config.prelude_layers}, block of {config.loop_layers} x "
              f"{config.loop_iterations} iterations, coda {c} -> {config.num_applications} "
              f"applications (injection {config.loop_injection}, sources {opts['sources']})")
    print(f"depth_attention stride {opts['stride']}, recent_window {opts['recent_window']}; "
          f"parameters: depth_attention {depth.num_parameters():,} = vanilla "
          f"{vanilla.num_parameters():,}")

    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    logits = depth(ids)
    t_depth = _forward_seconds(depth, ids, 5)
    t_vanilla = _forward_seconds(vanilla, ids, 5)
    diff_vs_vanilla = (logits - vanilla(ids)).abs().max().item()
    print(f"\nforward (1 x {seq_len} tokens, CPU fp32): depth_attention {t_depth * 1e3:.1f} ms, "
          f"vanilla {t_vanilla * 1e3:.1f} ms, ratio {t_depth / t_vanilla:.3f}")
    print(f"max |logits(depth) - logits(vanilla)| on the same weights: {diff_vs_vanilla:.3f} "
          f"(the mechanism is active)")

    # Cached decoding: prefill, then one token at a time; compare with the full forward.
    prompt = ids[:, :16]
    out = generate(depth, prompt, max_new_tokens=new_tokens)
    full = depth(out)[:, 15:-1].argmax(-1)
    print(f"\ngreedy decoding with the KV cache: {out[0, 16:].tolist()}")
    print(f"same tokens as argmax of one full forward: {bool((full == out[:, 16:]).all())}")
    cache = KVCache.for_model(depth, 1, out.shape[1])
    stepwise = torch.cat([depth(out[:, :16], cache=cache)] +
                         [depth(out[:, t:t + 1], cache=cache) for t in range(16, out.shape[1])], 1)
    decode_err = (stepwise - depth(out)).abs().max().item()
    print(f"max |logits(prefill + decode) - logits(full forward)|: {decode_err:.2e}")

    with capture_depth_weights(depth) as rec:
        depth(prompt)
    token = prompt.shape[1] - 1
    # the recorder is keyed by application e, which is the layer index when not looped
    itself, slot = ("the application itself", "e") if config.looped else ("the layer itself", "L")
    print(f"\ndepth-attention weights α of token {token} (kv head 0; sources, then {itself}):")
    for app in applications(config):
        label = _row_label(app, config.looped)
        if app.index not in rec.sources:
            print(f"  {label}: no sources, value unchanged")
            continue
        alpha = rec.weights[app.index][0, 0, token].tolist()
        slots = [f"{slot}{j}={a:.3f}" for j, a in zip(rec.sources[app.index] + [app.index], alpha)]
        print(f"  {label}: " + "  ".join(slots))

    cache_len = config.max_seq_len
    bytes_depth = KVCache.for_model(depth, 1, cache_len).nbytes
    bytes_vanilla = KVCache.for_model(vanilla, 1, cache_len).nbytes
    slots_note = f"; {config.num_applications} slots, one per application" if config.looped else ""
    print(f"\nKV cache for 1 x {cache_len} tokens (fp32{slots_note}): depth_attention "
          f"{bytes_depth:,} B, vanilla {bytes_vanilla:,} B, ratio "
          f"{bytes_depth / bytes_vanilla:.3f}")
    return {"forward_ratio": t_depth / t_vanilla, "decode_max_abs_err": decode_err,
            "cache_bytes_depth": bytes_depth, "cache_bytes_vanilla": bytes_vanilla,
            "same_tokens_as_full_forward": bool((full == out[:, 16:]).all()),
            "rows": [_row_label(app, config.looped) for app in applications(config)],
            "sources": {e: list(s) for e, s in rec.sources.items()}}
