"""Task names for `depthattn eval --tasks`: the paper's (offline), the corpus ones, and any
other lm-eval task (which then needs its dataset from the Hugging Face cache or network)."""

from __future__ import annotations

import difflib

from depthattn.eval.tasks.corpus import CORPUS_TASKS
from depthattn.eval.tasks.paper import ALIASES, NOT_OFFLINE, PAPER_TASKS, TASK_PREFIX
from depthattn.utils.errors import DepthAttnError

PAPER = tuple(PAPER_TASKS)
OUR_NAMES = ("paper", *PAPER, *ALIASES, *CORPUS_TASKS, *NOT_OFFLINE)  # no lm-eval index needed


def resolve_task_names(tasks: str | list[str], lm_eval_tasks: list[str] | None = None) -> list[str]:
    """`"paper"`, a comma-separated string or a list -> task names, de-duplicated in order.

    A name that is neither ours nor in `lm_eval_tasks` raises, listing the close matches.
    """
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        expanded = PAPER if name == "paper" else (ALIASES.get(name, name),)
        out.extend(n for n in expanded if n not in out)
    if not out:
        raise DepthAttnError("no task given: pass --tasks paper, or names separated by commas")
    ours = list(OUR_NAMES)
    known = set(ours) | set(lm_eval_tasks or ())
    unknown = [n for n in out if n not in known]
    if unknown:
        lines = []
        for n in unknown:
            close = difflib.get_close_matches(n, ours + sorted(known - set(ours)), n=5, cutoff=0.6)
            lines.append(f"  {n!r}: " + (f"did you mean {', '.join(close)}?" if close
                                         else "no close match"))
        raise DepthAttnError("unknown task name(s):\n" + "\n".join(lines)
                         + f"\nours: paper ({', '.join(PAPER)}), {', '.join(CORPUS_TASKS)}; "
                         "any lm-eval task name is accepted too")
    return out


def lm_eval_name(name: str) -> str:
    """The name our task YAMLs give a task (paper tasks carry a prefix)."""
    return f"{TASK_PREFIX}{name}" if name in PAPER_TASKS else name


__all__ = ["CORPUS_TASKS", "NOT_OFFLINE", "OUR_NAMES", "PAPER", "PAPER_TASKS", "lm_eval_name",
           "resolve_task_names"]
