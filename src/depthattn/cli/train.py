"""`depthattn train`: train one model from a config file and key=value overrides; under
torchrun (``torchrun --nproc-per-node N -m depthattn train ...``) on N processes with FSDP2."""

from __future__ import annotations

import argparse
import os

from depthattn.utils.errors import DepthAttnError

HELP = "train one model"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training config file (.toml/.yaml/.json) or a shipped "
                                         "one by name: quickstart, paper_360m ... paper_3b")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run_dir (its saved configuration is the base: "
                             "`depthattn train --resume run_dir=RUN` is enough)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (world size, mesh, batch, accumulation, tokens per "
                             "step) and the memory estimate per device, then stop; nothing is "
                             "allocated or written")
    parser.add_argument("--world-size", type=int, default=None, metavar="N",
                        help="with --dry-run: plan for N processes (default: torchrun's "
                             "WORLD_SIZE, else 1)")
    parser.add_argument("--device-type", choices=("cuda", "cpu"), default=None,
                        help="with --dry-run: plan for this kind of device (default: the "
                             "config's device, auto meaning cuda when present)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training fields, e.g. method=depth_attention steps=400")


def run_train(args: argparse.Namespace) -> int:
    from depthattn.train import load_train_config, train
    from depthattn.train.run_dir import RunDir

    config = load_train_config(args.config, args.overrides)
    if not args.dry_run and (args.world_size is not None or args.device_type is not None):
        raise DepthAttnError("--world-size and --device-type only shape a --dry-run plan; a real "
                             "run takes its world size from torchrun")
    if args.dry_run:
        return _dry_run(config, args)
    run = RunDir(config.run_dir)
    if args.resume and run.is_run():
        # What the file and the command line do not say is what the run was started with.
        config = load_train_config(args.config, args.overrides, base=run.read_config())
    # stopped by a signal: TrainingStopped carries the exit status the CLI returns
    result = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports for the job
    print(f"{result.run_dir}: step {result.step}, validation loss {result.val.loss:.4f} "
          f"(ppl {result.val.perplexity:.2f}) over {result.val.tokens:,} tokens")
    return 0


def _dry_run(config, args: argparse.Namespace) -> int:
    from depthattn.train.distributed import world_size_from_environment
    from depthattn.train.preflight import format_plan, plan_training
    from depthattn.utils.devices import resolve_device

    world = args.world_size if args.world_size is not None else world_size_from_environment()
    if world < 1:
        raise DepthAttnError(f"--world-size ({world}) must be at least 1")
    device_type = args.device_type or resolve_device(config.device).type
    print(format_plan(plan_training(config, world, device_type), config))
    return 0
