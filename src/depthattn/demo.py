"""`depthattn demo`: Depth-Attention on the tiny preset, next to vanilla with the same weights.

Builds both models, runs a forward, decodes with the KV cache (checking it against the full
forward), prints the depth-attention weights of one token and the cache sizes. The weights are
random: this shows the mechanics, not a trained model (training arrives with `depthattn train`).
"""

from __future__ import annotations

import time

import torch

from depthattn.analysis.depth_weights import capture_depth_weights
from depthattn.config import ModelConfig
from depthattn.generation import generate
from depthattn.model import CausalLM, KVCache


def _forward_seconds(model: CausalLM, ids: torch.Tensor, repeats: int) -> float:
    model(ids)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model(ids)
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def run_demo(preset: str = "tiny", seq_len: int = 256, new_tokens: int = 8, seed: int = 0,
             stride: int | None = None, recent_window: int = 0) -> dict:
    torch.manual_seed(seed)
    config = ModelConfig.from_preset(preset, method="depth_attention",
                                     method_options={"stride": stride, "recent_window": recent_window})
    depth = CausalLM(config).eval()
    vanilla = CausalLM(config.with_method("vanilla")).eval()
    vanilla.load_state_dict(depth.state_dict(), strict=True)  # zero new parameters
    opts = config.method_options
    print(f"preset {preset}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"heads {config.num_heads}/{config.num_kv_heads} (q/kv), head_dim {config.head_dim}")
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
    print(f"\ndepth-attention weights α of token {token} (kv head 0; sources, then the layer itself):")
    for layer in range(config.num_layers):
        if layer not in rec.sources:
            print(f"  layer {layer:2d}: no sources, value unchanged")
            continue
        alpha = rec.weights[layer][0, 0, token].tolist()
        slots = [f"L{j}={a:.3f}" for j, a in zip(rec.sources[layer] + [layer], alpha)]
        print(f"  layer {layer:2d}: " + "  ".join(slots))

    cache_len = config.max_seq_len
    bytes_depth = KVCache.for_model(depth, 1, cache_len).nbytes
    bytes_vanilla = KVCache.for_model(vanilla, 1, cache_len).nbytes
    print(f"\nKV cache for 1 x {cache_len} tokens (fp32): depth_attention {bytes_depth:,} B, "
          f"vanilla {bytes_vanilla:,} B, ratio {bytes_depth / bytes_vanilla:.3f}")
    return {"forward_ratio": t_depth / t_vanilla, "decode_max_abs_err": decode_err,
            "cache_bytes_depth": bytes_depth, "cache_bytes_vanilla": bytes_vanilla}
