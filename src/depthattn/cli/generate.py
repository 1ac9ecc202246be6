"""`depthattn generate`: stream a continuation of each --prompt."""

from __future__ import annotations

import argparse

import torch

from depthattn.utils.checks import require_int
from depthattn.utils.devices import resolve_device
from depthattn.utils.errors import DepthAttnError

HELP = "stream a continuation of --prompt"


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a run directory, a depthattn (Hugging Face or model) "
                                     "folder or a Qwen3 folder")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text to continue (repeat for several prompts)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json or folder (default: the folder's, or the run's)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def run_generate(args: argparse.Namespace) -> None:
    from transformers import TextStreamer

    from depthattn.data.tokenizer import check_vocab_fits
    from depthattn.hf.modeling import DepthAttnForCausalLM
    from depthattn.io import folder_kind, load_model, load_tokenizer_for

    require_int("--max-new-tokens", args.max_new_tokens, 1)
    if args.temperature < 0:
        raise DepthAttnError(f"--temperature ({args.temperature}) must be >= 0 (0 = greedy)")
    folder_kind(args.path)  # a path no loader reads fails before the tokenizer is looked for
    tokenizer = load_tokenizer_for(args.path, args.tokenizer)
    device = resolve_device(args.device)
    model = DepthAttnForCausalLM.from_core(load_model(args.path, device=device)).eval()
    check_vocab_fits(len(tokenizer), model.config.vocab_size)
    torch.manual_seed(args.seed)  # transformers' generate samples from the global generator
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k or 0,
                    top_p=args.top_p or 1.0) if args.temperature > 0 else dict(do_sample=False)
    for prompt in args.prompt:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        if ids.shape[1] == 0:
            raise DepthAttnError(f"the prompt {prompt!r} encodes to no tokens")
        streamer = TextStreamer(tokenizer)
        model.generate(ids, max_new_tokens=args.max_new_tokens,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       streamer=streamer, **sampling)
