"""`depthattn lm-eval ARGS...`: lm-evaluation-harness's own command line, ARGS unchanged, in a
process where

  - transformers' Auto classes know depthattn, so `--model hf --model_args pretrained=DIR`
    loads a folder written by `save_pretrained` (`depthattn convert --from-run`);
  - the folders of our tasks that --tasks names are appended to --include_path, built on first
    use (depthattn.eval.tasks).

`main` hands everything after `lm-eval` to run_lm_eval unparsed: argparse cannot hold options it
does not know in a REMAINDER that starts with one. Our only option, --depthattn-data, is taken
out before lm-eval parses the rest.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from depthattn.utils.errors import DepthAttnError

HELP = "lm-evaluation-harness's own command line, with depthattn models and our tasks"
DATA_OPTION = "--depthattn-data"
# Names, not imports: `depthattn --help` must not load the task modules (tests pin the list).
DETAILS = """\
Everything but --depthattn-data goes to lm-eval unchanged: `depthattn lm-eval run --help` lists
lm-eval's options. `--model hf --model_args pretrained=DIR` loads a depthattn Hugging Face folder
(`depthattn convert --from-run RUN --out DIR`); add add_bos_token=True to start every text with
BOS as `depthattn eval --tasks` does (then the numbers are the same).

Our tasks, found without --include_path, offline, their data built on first use:
  depthattn_arc_easy depthattn_arc_challenge depthattn_hellaswag depthattn_piqa depthattn_sciq
  depthattn_winogrande depthattn_lambada     the paper's, stock lm-eval definitions on local
                                             data ('depthattn_*' names them all)
  corpus_cloze corpus_continuation           from held-out documents of a corpus
                                             (--depthattn-data; default: the default corpus)

example:
  depthattn lm-eval --model hf --model_args pretrained=hf/da,add_bos_token=True \\
      --tasks depthattn_piqa,corpus_cloze --limit 20
"""


def add_lm_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """For the help only: `main` passes the arguments to run_lm_eval unparsed."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = DETAILS
    parser.add_argument(DATA_OPTION, metavar="PATH", default=None,
                        help="the corpus of corpus_cloze / corpus_continuation: 'default', a "
                             "prepared folder, or a corpus to prepare (as `depthattn train "
                             "data=...`; default: the default corpus)")
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="lm-eval's own arguments, passed on unchanged")


def lm_eval_help() -> str:
    parser = argparse.ArgumentParser(prog="depthattn lm-eval", description=HELP)
    add_lm_eval_arguments(parser)
    return parser.format_help()


def split_data_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--depthattn-data's value or None, the other arguments in their order)."""
    data, rest = None, []
    args = iter(argv)
    for arg in args:
        name, equals, value = arg.partition("=")
        if name != DATA_OPTION:
            rest.append(arg)
            continue
        if not equals:
            value = next(args, None)
            if value is None or value.startswith("-"):
                raise DepthAttnError(f"{DATA_OPTION} needs a value: a prepared folder, a corpus or "
                                     f"'default'")
        if data is not None:
            raise DepthAttnError(f"{DATA_OPTION} given twice ({data!r} and {value!r}): give it once")
        data = value
    return data, rest


def _strings(value: Any) -> list[str]:
    """A comma-separated string or a list of them (lm-eval accepts both) -> a list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part for item in items for part in str(item).split(",") if part.strip()]


def _from_config(args: argparse.Namespace) -> dict[str, Any]:
    """`lm-eval run --config FILE`: its values count where the command line gives none."""
    if not getattr(args, "config", None):
        return {}
    from lm_eval.config.evaluate_config import EvaluatorConfig

    return EvaluatorConfig.load_yaml_config(args.config)


def parse_command(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """lm-eval's CLI and its namespace for `argv`, our task folders appended to the include
    path; builds the data of the tasks of ours that --tasks names, and nothing else."""
    from depthattn.eval.tasks import check_corpus_source, task_folders

    data, rest = split_data_option(argv)
    if data is not None:
        check_corpus_source(data)  # before lm-eval and any work
    from lm_eval._cli import HarnessCLI

    cli = HarnessCLI()
    saved, sys.argv = sys.argv, ["lm-eval", *rest]  # its parse_args reads sys.argv
    try:
        args = cli.parse_args()
    finally:
        sys.argv = saved
    if not hasattr(args, "tasks"):  # `ls`, or no command: nothing of ours is named
        if data is not None:
            raise DepthAttnError(f"{DATA_OPTION} is for the corpus tasks named in --tasks; this "
                                 f"lm-eval command takes no --tasks")
        return cli, args
    config = _from_config(args)
    folders = task_folders(_strings(args.tasks or config.get("tasks")), data)
    if folders:
        # TaskManager takes a list; the command line holds only one path
        user = args.include_path or config.get("include_path") or []
        args.include_path = [*([user] if isinstance(user, str) else user), *map(str, folders)]
    return cli, args


def run_lm_eval(args: argparse.Namespace) -> None:
    argv = list(args.lm_eval_args)
    if not argv or {"-h", "--help"} & set(argv):
        print(lm_eval_help() + "\nlm-eval's own help:\n")  # then lm-eval prints its own
        sys.stdout.flush()
    cli, parsed = parse_command(argv)
    # lm-eval fills its model registry (hf, vllm, ...) only while it is empty: import it before
    # anything registers a model of its own (depthattn.eval.zeroshot_lm does)
    import lm_eval.models  # noqa: F401
    from lm_eval.utils import setup_logging

    from depthattn.hf import register_auto_classes

    register_auto_classes()
    setup_logging()  # as lm-eval's own entry point does
    cli.execute(parsed)
