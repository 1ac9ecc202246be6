"""The `depthattn` command: quickstart, demo, prepare, train, eval, compare, convert, generate,
flops."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> None:
    from depthattn.demo import run_demo

    run_demo(preset=args.preset, seq_len=args.seq_len, new_tokens=args.new_tokens,
             seed=args.seed, stride=args.stride, recent_window=args.recent_window)


def _train(args: argparse.Namespace) -> None:
    from depthattn.train import load_train_config, train

    config = load_train_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    print(f"{result.run_dir}: step {result.step}, validation loss {result.val.loss:.4f} "
          f"(ppl {result.val.perplexity:.2f}) over {result.val.tokens:,} tokens")


def _eval(args: argparse.Namespace) -> None:
    if args.tasks:  # zero-shot accuracy through lm-eval
        from depthattn.eval.zeroshot import run_zeroshot

        run_zeroshot(args)
        return
    from depthattn.eval.run import evaluate_path

    evaluate_path(args.path, data=args.data, seq_len=args.seq_len, windows=args.windows,
                  batch_size=args.batch_size, device=args.device)


def _compare(args: argparse.Namespace) -> None:
    from depthattn.compare import run_compare
    from depthattn.train import load_train_config

    config_path = args.config or ("quickstart" if args.quickstart else None)
    base = load_train_config(config_path, args.overrides, progress=not args.no_progress)
    methods = args.methods or ["vanilla", "depth_attention"]
    run_compare(base, methods, args.seeds, args.out, baseline=args.baseline, tasks=args.tasks,
                task_limit=args.task_limit)


def _add_compare_arguments(parser: argparse.ArgumentParser, quickstart: bool) -> None:
    if not quickstart:
        parser.add_argument("--config", help="training config file (.toml/.yaml/.json)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to compare, e.g. vanilla depth_attention:stride=2 "
                             "(default: vanilla depth_attention)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        default=[0, 1, 2] if quickstart else [0, 1])
    parser.add_argument("--out", default="runs/quickstart" if quickstart else "runs/compare")
    parser.add_argument("--baseline", default=None, help="default: vanilla if compared")
    parser.add_argument("--tasks", default="corpus_cloze,corpus_continuation" if quickstart
                        else None,
                        help="also report zero-shot accuracy on these lm-eval tasks, e.g. "
                             "corpus_cloze,corpus_continuation or paper ('' for none)")
    parser.add_argument("--task-limit", type=int, default=500 if quickstart else None,
                        help="documents per zero-shot task (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training fields, e.g. steps=400 lr=2e-3")
    parser.set_defaults(run=_compare, quickstart=quickstart, config=None) if quickstart \
        else parser.set_defaults(run=_compare, quickstart=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="Depth-Attention vs vanilla on a tiny random model: "
                                            "forward, cached decoding, depth weights, cache size")
    demo.add_argument("--preset", default="tiny")
    demo.add_argument("--seq-len", type=int, default=256)
    demo.add_argument("--new-tokens", type=int, default=8)
    demo.add_argument("--stride", type=int, default=None, help="default: num_layers // 2")
    demo.add_argument("--recent-window", type=int, default=0)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    from depthattn.data.cli import add_prepare_arguments, run_prepare

    prepare = commands.add_parser("prepare", help="corpus -> tokenizer -> token shards")
    add_prepare_arguments(prepare)
    prepare.set_defaults(run=run_prepare)

    train = commands.add_parser("train", help="train one model")
    train.add_argument("--config", help="training config file (.toml/.yaml/.json) or a shipped "
                                        "one by name: quickstart, paper_360m ... paper_3b")
    train.add_argument("--resume", action="store_true", help="continue the run in run_dir")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="training fields, e.g. method=depth_attention steps=400")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="validation perplexity of a run or a model "
                                   "folder, or zero-shot accuracy with --tasks")
    evaluate.add_argument("path", help="a run directory, a depthattn model folder or a Qwen3 "
                                       "Hugging Face folder")
    evaluate.add_argument("--data", default=None, help="prepared data (default: the run's)")
    evaluate.add_argument("--seq-len", type=int, default=None, help="default: the run's")
    evaluate.add_argument("--windows", type=int, default=0,
                          help="validation windows to use; 0 = the whole split")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto")
    from depthattn.eval.zeroshot import add_zeroshot_arguments

    add_zeroshot_arguments(evaluate, shared=False)  # --tasks --limit --dtype --tokenizer ...
    evaluate.set_defaults(run=_eval)

    compare = commands.add_parser("compare", help="methods x seeds, with statistics and plots")
    _add_compare_arguments(compare, quickstart=False)
    quick = commands.add_parser("quickstart", help="the README's main job: a small "
                                "Depth-Attention vs vanilla comparison on the offline corpus")
    _add_compare_arguments(quick, quickstart=True)

    from depthattn.convert import (
        add_convert_arguments,
        add_generate_arguments,
        run_convert,
        run_generate,
    )

    convert = commands.add_parser("convert", help="Qwen3 <-> depthattn, the authors' "
                                  "checkpoints, training runs -> Hugging Face folders")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)
    generate = commands.add_parser("generate", help="stream a continuation of --prompt")
    add_generate_arguments(generate)
    generate.set_defaults(run=run_generate)

    from depthattn.analysis.cost import add_flops_arguments, run_flops

    flops = commands.add_parser("flops", help="parameters, FLOPs and state per token of a method")
    add_flops_arguments(flops)
    flops.set_defaults(run=run_flops)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"depthattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
