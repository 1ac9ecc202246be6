"""`depthattn eval PATH`: validation perplexity of a run or a model folder, or zero-shot accuracy
through lm-eval with --tasks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from depthattn.ops.kv_quant import KV_FORMATS
from depthattn.train.run_dir import RunDir
from depthattn.utils.errors import DepthAttnError

HELP = ("validation perplexity of a run or a model folder, or zero-shot accuracy with --tasks")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="+",
                        help="a run directory, a depthattn model folder or a Qwen3 Hugging Face "
                             "folder (several with --loops)")
    parser.add_argument("--loops", default=None, metavar="R1,R2,...",
                        help="looped models: the perplexity at each of these numbers of loop "
                             "iterations (e.g. 1,2,4,8,16), a table and loops.json/.md/.png in "
                             "--out-dir (default: the first PATH's folder)")
    parser.add_argument("--data", default=None, help="prepared data (default: the run's)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the run's")
    parser.add_argument("--windows", type=int, default=0,
                        help="validation windows to use; 0 = the whole split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kv-cache", default=None, choices=KV_FORMATS,
                        help="compute the perplexity through a KV cache stored in this format "
                             "(prefilled --prefill-chunk tokens at a time), so attention reads "
                             "the stored keys and values")
    parser.add_argument("--prefill-chunk", type=int, default=None,
                        help="tokens per forward call with --kv-cache (default 32)")
    add_zeroshot_arguments(parser, shared=False)  # --tasks --limit --dtype --tokenizer ...


def run_eval(args: argparse.Namespace) -> None:
    paths = args.path if isinstance(args.path, list) else [args.path]
    if args.prefill_chunk is not None and args.kv_cache is None:
        raise DepthAttnError("--prefill-chunk applies with --kv-cache: give a cache format too")
    if args.loops is not None:
        from depthattn.eval.loops import evaluate_loops, parse_loops

        loops = parse_loops(args.loops)  # before any work
        if args.tasks:
            raise DepthAttnError("--loops applies to the perplexity evaluation, not to --tasks")
        evaluate_loops(paths, loops, out_dir=args.out_dir, data=args.data,
                       seq_len=args.seq_len, windows=args.windows, batch_size=args.batch_size,
                       device=args.device, kv_cache=args.kv_cache,
                       prefill_chunk=32 if args.prefill_chunk is None else args.prefill_chunk)
        return
    if len(paths) > 1:
        raise DepthAttnError(f"one PATH at a time ({len(paths)} given): several paths apply "
                             f"with --loops")
    args.path = paths[0]
    if args.tasks:  # zero-shot accuracy through lm-eval
        if args.kv_cache is not None or args.prefill_chunk is not None:
            raise DepthAttnError("--kv-cache and --prefill-chunk apply to the perplexity "
                                 "evaluation, not to --tasks")
        run_zeroshot(args)
        return
    from depthattn.eval.run import evaluate_path

    evaluate_path(args.path, data=args.data, seq_len=args.seq_len, windows=args.windows,
                  batch_size=args.batch_size, device=args.device, kv_cache=args.kv_cache,
                  prefill_chunk=32 if args.prefill_chunk is None else args.prefill_chunk)


def add_zeroshot_arguments(parser: argparse.ArgumentParser, shared: bool = True) -> None:
    """Options of `depthattn eval --tasks`; shared=False leaves out --batch-size and --device
    for a parser that already has them (the perplexity `eval`)."""
    parser.add_argument("--tasks", default=None,
                        help="zero-shot tasks: 'paper' (ARC-E/C, HellaSwag, PIQA, SciQ, "
                             "WinoGrande, LAMBADA, offline), corpus_cloze, corpus_continuation, "
                             "or lm-eval task names, separated by commas")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--tokenizer", default=None, help="default: the run's or the folder's")
    parser.add_argument("--out-dir", default=None, help="where zeroshot.json / zeroshot.md go "
                        "(default: PATH/zeroshot for a run directory), or loops.json / .md / "
                        ".png with --loops (default: the first PATH's folder, else the working "
                        "directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus tasks")
    if shared:
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument("--device", default="auto")


def run_zeroshot(args: argparse.Namespace) -> list[dict[str, Any]]:
    from depthattn.eval.zeroshot import evaluate_zeroshot, markdown_table

    path = Path(args.path)
    run = RunDir(path)
    out_dir = args.out_dir or (run.zeroshot_dir if run.is_run() else None)
    rows = evaluate_zeroshot(path, args.tasks or "paper", limit=args.limit,
                             batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                             out_dir=out_dir, tokenizer=args.tokenizer,
                             data=getattr(args, "data", None), seed=args.seed)
    print(markdown_table(rows), end="")
    if out_dir is not None:
        print(f"written: {Path(out_dir) / 'zeroshot.json'}, {Path(out_dir) / 'zeroshot.md'}")
    return rows
