"""vLLM decode speed, Depth-Attention against vanilla, same run (docs/serving.md).

    .venv-vllm/bin/python -m benchmarks.vllm_decode                       # quickstart + 360m, CPU
    python -m benchmarks.vllm_decode --shapes 360m --batch 1 32 --dtype bfloat16   # on a GPU

For each shape, random weights are saved as one Hugging Face folder per method (the same
weights: Depth-Attention has no parameters of its own). Each round starts vLLM on one folder,
in a process of its own, and times ``--new`` greedy decode steps for ``--batch`` prompts of
``--context`` tokens: the time of generating new + 1 tokens minus that of generating 1 (the
prefill), over new × batch tokens. Methods interleave (vanilla, Depth-Attention, then the
other order), and the table gives each method's median over ``--rounds`` and the ratio
Depth-Attention / vanilla.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("vanilla", "depth_attention")
SHAPES = {
    # the quickstart's model (src/depthattn/configs/quickstart.toml), its vocabulary
    "quickstart": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_layers=8,
                       num_heads=4, num_kv_heads=2, head_dim=32, max_seq_len=2048),
    "360m": "360m",  # a preset (depthattn.PRESETS)
}


def write_folders(shape: str, root: Path) -> dict[str, Path]:
    """The same random weights as one folder per method, with a byte-level tokenizer (vLLM
    wants one; the prompts are token ids)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from depthattn import PRESETS, CausalLM, ModelConfig
    from depthattn.hf import DepthAttnForCausalLM

    fields = SHAPES[shape]
    fields = dict(PRESETS[fields] if isinstance(fields, str) else fields)
    backend = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(256)}, unk_token="<0>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<1>")
    torch.manual_seed(0)
    weights = CausalLM(ModelConfig(**{**fields, "method": "vanilla"})).state_dict()
    folders = {}
    for method in METHODS:
        model = CausalLM(ModelConfig(**{**fields, "method": method}))
        model.load_state_dict(weights)
        folders[method] = root / shape / method
        DepthAttnForCausalLM.from_core(model, eos_token_id=1).save_pretrained(folders[method])
        tokenizer.save_pretrained(folders[method])
    return folders


def one_round(folder: Path, batch: int, context: int, new: int, dtype: str) -> float:
    """Decode tokens/s of one fresh vLLM engine (this script with --worker, its own process)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.vllm_decode", "--worker",
                           str(folder), "--batch", str(batch), "--context", str(context),
                           "--new", str(new), "--dtype", dtype],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"]


def worker(folder: str, batch: int, context: int, new: int, dtype: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype=dtype, enforce_eager=True, max_model_len=context + new + 1,
              max_num_seqs=batch, max_num_batched_tokens=max(batch * context, 256),
              kv_cache_memory_bytes=None if os.environ.get("CUDA_VISIBLE_DEVICES") else 1 << 30,
              seed=0)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 250 + 2 for j in range(context)]}
               for i in range(batch)]

    def seconds(tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    seconds(2)  # warm up
    decode = seconds(new + 1) - seconds(1)
    print(json.dumps({"tokens_per_s": new * batch / decode}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--worker", metavar="FOLDER")
    args = parser.parse_args()
    if args.rounds < 3 and not args.worker:
        parser.error(f"--rounds {args.rounds}: a median needs at least 3")
    if args.worker:
        worker(args.worker, args.batch[0], args.context, args.new, args.dtype)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            folders = write_folders(shape, Path(tmp))
            for batch in args.batch:
                speeds = {m: [] for m in METHODS}
                for r in range(args.rounds):
                    for method in METHODS if r % 2 == 0 else METHODS[::-1]:
                        speeds[method].append(one_round(folders[method], batch, args.context,
                                                        args.new, args.dtype))
                medians = {m: statistics.median(v) for m, v in speeds.items()}
                rows.append((shape, batch, medians["vanilla"], medians["depth_attention"]))
                print(f"{shape} batch {batch}: {speeds}", file=sys.stderr, flush=True)
    print(f"vLLM decode, {args.context}-token prompts, {args.new} new tokens, {args.dtype}, "
          f"median of {args.rounds} rounds (methods interleaved)\n")
    print("| shape | batch | vanilla tok/s | Depth-Attention tok/s | DA / vanilla |")
    print("|---|---:|---:|---:|---:|")
    for shape, batch, vanilla, depth in rows:
        print(f"| {shape} | {batch} | {vanilla:,.1f} | {depth:,.1f} | {depth / vanilla:.3f} |")


if __name__ == "__main__":
    main()
