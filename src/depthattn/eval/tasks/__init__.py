"""Task names for `depthattn eval --tasks`: the paper's (offline), the corpus ones, and any
other lm-eval task (which then needs its dataset from the Hugging Face cache or network); and
the folders `depthattn lm-eval` must include for the tasks of ours a `--tasks` list names.

Our tasks have stable lm-eval names: `depthattn_<task>` for the paper's and `corpus_cloze` /
`corpus_continuation`. Their YAMLs live in hash-named cache folders, built on first use, only
for what the list names. Entries match as in lm-eval (fnmatch): `depthattn_*` names every
paper task.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from pathlib import Path

from depthattn.eval.tasks.corpus import CORPUS_TASKS
from depthattn.eval.tasks.paper import ALIASES, NOT_OFFLINE, PAPER_TASKS, TASK_PREFIX
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

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


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """``resolve_task_names`` against lm-eval's index, built (seconds) only for a name not ours."""
    requested = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    if all(t.strip() in OUR_NAMES for t in requested):
        return resolve_task_names(tasks)
    from lm_eval.tasks import TaskManager

    return resolve_task_names(tasks, TaskManager().all_tasks)


def lm_eval_name(name: str) -> str:
    """The name our task YAMLs give a task (paper tasks carry a prefix)."""
    return f"{TASK_PREFIX}{name}" if name in PAPER_TASKS else name

PAPER_NAMES = {f"{TASK_PREFIX}{name}": name for name in PAPER_TASKS}  # lm-eval name -> ours


def named_tasks(entries: list[str]) -> tuple[list[str], list[str]]:
    """(paper tasks, corpus tasks) that `entries` (names or patterns) name, in our order."""
    ours = [*PAPER_NAMES, *CORPUS_TASKS]
    matched = {name for entry in entries for name in fnmatch.filter(ours, entry.strip())}
    return ([PAPER_NAMES[n] for n in PAPER_NAMES if n in matched],
            [n for n in CORPUS_TASKS if n in matched])


def check_corpus_source(data: str) -> None:
    """What `depthattn train data=...` accepts: 'default', a prepared folder (or its
    manifest.json) or a corpus to prepare; anything else fails here, before any work."""
    from depthattn.data.defaults import DEFAULT_SOURCE

    if data != DEFAULT_SOURCE and not Path(data).exists():
        raise DepthAttnError(f"corpus data {data!r} does not exist: give 'default', a prepared "
                             f"folder (or its manifest.json), or a corpus to prepare (a text "
                             f"file, a "
                             f"folder of .txt files, a .jsonl file or a `datasets` folder)")


def task_folders(entries: list[str], data: str | None = None) -> list[Path]:
    """The task folders (paper, then corpus) for the tasks of ours named in `entries`, built
    on first use. data: the corpus the corpus tasks come from (default: the default corpus,
    prepared as `depthattn prepare` does)."""
    from depthattn.data.defaults import DEFAULT_SOURCE
    from depthattn.data.prepare_text import resolve_data
    from depthattn.data.tokenizer import DEFAULT_VOCAB_SIZE
    from depthattn.eval.tasks.corpus import ensure_corpus_tasks
    from depthattn.eval.tasks.paper import ensure_paper_tasks

    paper, corpus = named_tasks(entries)
    if data is not None and not corpus:
        raise DepthAttnError(f"corpus data ({data!r}) is for {' and '.join(CORPUS_TASKS)}, and the "
                             f"tasks ({','.join(entries)}) name neither")
    folders = []
    if paper:
        folders.append(ensure_paper_tasks(paper))
    if corpus:
        data = data or DEFAULT_SOURCE
        check_corpus_source(data)
        # The vocabulary only decides which prepared folder is reused: the tasks' documents
        # are decoded text, the same for every tokenizer.
        folders.append(ensure_corpus_tasks(resolve_data(data, DEFAULT_VOCAB_SIZE)))
    logger.info("our task folders: %s", ", ".join(map(str, folders)) or "none named")
    return folders


__all__ = ["CORPUS_TASKS", "NOT_OFFLINE", "OUR_NAMES", "PAPER", "PAPER_TASKS", "check_corpus_source",
           "lm_eval_name", "named_tasks", "resolve_task_names", "resolve_tasks", "task_folders"]
