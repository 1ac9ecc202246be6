"""Run vLLM on a depthattn folder in a process of its own and write what it produced as JSON.

    python tests/serve/vllm_runner.py FOLDER OUT.json PROMPTS.json [--max-tokens N]

PROMPTS.json: a list of token-id lists. OUT.json: the greedy tokens and the top-5
log-probabilities of every step, for all prompts submitted together (``batch``) and for each
prompt alone (``alone``), and the KV-cache layout vLLM allocated (``kv``). vLLM runs in float32,
eagerly, with a small KV cache: the settings of a 2-core CPU test machine.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: starts in seconds
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # a function to the worker
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=128, max_num_seqs=8,
              max_num_batched_tokens=256, kv_cache_memory_bytes=8 << 20, seed=0)


def kv_layout(worker) -> dict:
    """In the worker: each attention layer's cache spec and the bytes it allocates per token."""
    specs = worker.get_kv_cache_spec()
    return {name: dict(kind=type(spec).__name__, block_size=spec.block_size,
                       num_kv_heads=getattr(spec, "num_kv_heads", None),
                       head_size=getattr(spec, "head_size", None),
                       bytes_per_token=spec.page_size_bytes // spec.block_size)
            for name, spec in sorted(specs.items())}


def completions(llm, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=5)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [dict(tokens=list(o.outputs[0].token_ids), text=o.outputs[0].text,
                 logprobs=[{str(t): lp.logprob for t, lp in step.items()}
                           for step in o.outputs[0].logprobs])
            for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("prompts")
    parser.add_argument("--max-tokens", type=int, default=12)
    args = parser.parse_args()
    from vllm import LLM

    with open(args.prompts) as f:
        prompts = json.load(f)
    llm = LLM(model=args.folder, **ENGINE)
    result = dict(batch=completions(llm, prompts, args.max_tokens),
                  alone=[completions(llm, [p], args.max_tokens)[0] for p in prompts],
                  kv=llm.collective_rpc(kv_layout)[0],
                  architecture=llm.llm_engine.vllm_config.model_config.architecture)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
