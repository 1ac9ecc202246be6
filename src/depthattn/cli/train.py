"""`depthattn train`: train one model from a config file and key=value overrides."""

from __future__ import annotations

import argparse

HELP = "train one model"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training config file (.toml/.yaml/.json) or a shipped "
                                         "one by name: quickstart, paper_360m ... paper_3b")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run_dir (its saved configuration is the base: "
                             "`depthattn train --resume run_dir=RUN` is enough)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training fields, e.g. method=depth_attention steps=400")


def run_train(args: argparse.Namespace) -> int:
    from depthattn.run_dir import RunDir
    from depthattn.train import load_train_config, train

    config = load_train_config(args.config, args.overrides)
    run = RunDir(config.run_dir)
    if args.resume and run.is_run():
        # What the file and the command line do not say is what the run was started with.
        config = load_train_config(args.config, args.overrides, base=run.read_config())
    # stopped by a signal: TrainingStopped carries the exit status the CLI returns
    result = train(config, resume=args.resume)
    print(f"{result.run_dir}: step {result.step}, validation loss {result.val.loss:.4f} "
          f"(ppl {result.val.perplexity:.2f}) over {result.val.tokens:,} tokens")
    return 0
