"""The folders lm-eval must include for the tasks of ours that a `--tasks` list names.

Our tasks have stable lm-eval names: `depthattn_<task>` for the paper's (`depthattn_piqa`, ...)
and `corpus_cloze` / `corpus_continuation`. Their YAMLs live in hash-named cache folders, built
on first use; only what the list names is built: no paper data for a corpus-only run, no corpus
preparation for a paper-only one. Entries are matched as lm-eval matches them (fnmatch), so
`depthattn_*` names every paper task.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from depthattn.eval.tasks.corpus import CORPUS_TASKS
from depthattn.eval.tasks.paper import PAPER_TASKS, TASK_PREFIX
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

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
                         f"folder (or its manifest.json), or a corpus to prepare (a text file, a "
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
