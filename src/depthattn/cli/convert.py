"""`depthattn convert`: Qwen3 and DeepseekV3 <-> depthattn, the authors' checkpoints, training
runs -> Hugging Face folders (the conversions themselves are in depthattn.hf.convert)."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthattn.cli.options import add_depth_attention_options
from depthattn.utils.errors import DepthAttnError

HELP = ("Qwen3 / DeepseekV3 <-> depthattn, the authors' checkpoints, training runs -> Hugging "
        "Face folders")
# The sources that take a method and model overrides: pretrained weights read with a method.
FROM_PRETRAINED = ("--from-qwen3", "--from-deepseek-v3")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-qwen3", metavar="DIR",
                        help="a local Qwen3 checkpoint folder; no weight is changed (a "
                             "retrofitted Depth-Attention model needs continued training)")
    source.add_argument("--to-qwen3", metavar="DIR",
                        help="a vanilla depthattn model (Hugging Face folder, model folder or "
                             "training run) to a Qwen3 folder")
    source.add_argument("--from-deepseek-v3", metavar="DIR",
                        help="a local dense DeepseekV3 checkpoint folder (no mixture-of-experts "
                             "layer): an MLA model; no weight is changed")
    source.add_argument("--to-deepseek-v3", metavar="DIR",
                        help="a vanilla depthattn MLA model (Hugging Face folder, model folder "
                             "or training run) to a DeepseekV3 folder")
    source.add_argument("--from-official", metavar="DIR",
                        help="a checkpoint folder in the Depth-Attention authors' format")
    source.add_argument("--from-run", metavar="RUN_DIR",
                        help="a `depthattn train` run directory (or a depthattn model folder) "
                             "to a Hugging Face folder, with the run's tokenizer when found")
    parser.add_argument("--tokenizer", default=None,
                        help="with --from-run: the tokenizer to include (default: the run's)")
    parser.add_argument("--method", default="depth_attention",
                        help="with --from-qwen3 or --from-deepseek-v3: the method to run "
                             "(default depth_attention; parameter-free methods only)")
    add_depth_attention_options(parser)  # with --from-qwen3 / --from-deepseek-v3
    parser.add_argument("--sources", default=None, choices=["applications", "recurrent"],
                        help="with --from-qwen3 and a looped reading: Depth-Attention's source "
                             "rule (default applications)")
    parser.add_argument("--mla-mix", default=None, choices=["latent", "values"],
                        help="with --from-deepseek-v3: what Depth-Attention's mix reaches on "
                             "MLA (default latent: keys and values, the cache unchanged; "
                             "values: values only, d_c more cached numbers)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="with --from-qwen3 or --from-deepseek-v3: model fields beside the "
                             "checkpoint's geometry, e.g. a looped reading of a Qwen3's layers: "
                             "prelude_layers=1 loop_layers=2 loop_iterations=3")
    parser.add_argument("--out", required=True, help="output folder")


def run_convert(args: argparse.Namespace) -> None:
    from depthattn.hf.convert import (
        from_deepseek_v3,
        from_official,
        from_qwen3,
        to_deepseek_v3,
        to_qwen3,
    )
    from depthattn.hf.export import export_run
    from depthattn.utils.parsing import parse_key_values

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DepthAttnError(f"--out {out} exists and is not empty; choose a new folder")
    options = {k: v for k, v in (("stride", args.stride), ("recent_window", args.recent_window),
                                 ("sources", args.sources), ("mla_mix", args.mla_mix))
               if v is not None}
    overrides = parse_key_values(args.overrides, what="model override")
    if args.from_qwen3 or args.from_deepseek_v3:
        if options and args.method != "depth_attention":
            given = "/".join(f"--{k.replace('_', '-')}" for k in options)
            raise DepthAttnError(f"{given} apply to --method depth_attention only")
        if args.from_qwen3:
            if "mla_mix" in options:
                raise DepthAttnError("--mla-mix applies to --from-deepseek-v3 only (a Qwen3 "
                                     "model has no latent attention)")
            path = from_qwen3(args.from_qwen3, out, args.method, overrides=overrides, **options)
        else:
            path = from_deepseek_v3(args.from_deepseek_v3, out, args.method,
                                    overrides=overrides, **options)
    else:
        pretrained = " or ".join(FROM_PRETRAINED)
        if overrides:
            raise DepthAttnError(f"model overrides ({', '.join(args.overrides)}) only apply to "
                                 f"{pretrained}")
        if options or args.method != "depth_attention":
            given = [f"--{k.replace('_', '-')}" for k in options]
            raise DepthAttnError(f"{', '.join(given) or '--method'} only applies to {pretrained}"
                                 + (" (--from-official reads the method from the checkpoint)"
                                if args.from_official else ""))
        if args.tokenizer is not None and not args.from_run:
            raise DepthAttnError("--tokenizer only applies to --from-run")
        if args.from_run:
            path = export_run(args.from_run, out, tokenizer=args.tokenizer)
        elif args.to_qwen3:
            path = to_qwen3(args.to_qwen3, out)
        elif args.to_deepseek_v3:
            path = to_deepseek_v3(args.to_deepseek_v3, out)
        else:
            path = from_official(args.from_official, out)
    print(f"wrote {path}")
