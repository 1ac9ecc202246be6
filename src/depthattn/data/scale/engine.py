"""`prepare_with_datatrove`: the stages of `depthattn.data.scale`, checked, built and run on a
datatrove executor: locally, one stage after the other, or submitted to Slurm as a chain of
array jobs, each depending on the one before.

A rerun of the same command resumes: datatrove skips the tasks it marked complete in the work
folder, and a finished manifest with the same request returns at once. The work folder belongs
to one request (`request.json`); another one is refused rather than mixed in.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthattn.data import corpus
from depthattn.data.defaults import DEFAULT_SOURCE
from depthattn.data.files import read_json, remove_stale_temp_files
from depthattn.data.manifest import MANIFEST_NAME
from depthattn.data.pack import PACK_VERSION
from depthattn.data.pipeline import (
    bpe_options,
    check_arguments,
    check_tokenizer_choice,
    default_out_dir,
    input_fingerprint,
)
from depthattn.data.prepared import TOKENIZER_DIR, is_prepared, store_given_tokenizer
from depthattn.data.tokenizer import load_tokenizer, tokenizer_sha256
from depthattn.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
REQUEST_FILE = "request.json"
JOBS_FILE = "slurm_jobs.json"  # the ids of the last submission
# Word 3-grams, as `prepare`'s near-duplicate search; 14 bands of 8 hashes (datatrove's and
# FineWeb's LSH): pairs of Jaccard similarity about 0.75 and more are found (0.5: 5 %).
MINHASH_NGRAMS = 3
MINHASH_BUCKETS = 14
MINHASH_HASHES_PER_BUCKET = 8


@dataclass(frozen=True)
class SlurmOptions:
    """What the sbatch scripts of the stages ask for (datatrove's SlurmPipelineExecutor)."""

    partition: str
    time: str = "24:00:00"  # per task
    cpus_per_task: int = 4
    mem_per_cpu_gb: int = 2
    # run before each task, e.g. "source /path/to/.venv/bin/activate" (default: this venv's)
    env_command: str | None = None
    job_name: str = "depthattn-prepare"
    sbatch_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"account": "lm"}


def _require_datatrove() -> None:
    if importlib.util.find_spec("datatrove") is None:
        raise ImportError("the datatrove engine needs datatrove: pip install "
                          "'depthattn[scale]'")


def _check_engine_arguments(source: str, tasks: int, workers: int | None, executor: str,
                            slurm: SlurmOptions | None, minhash: tuple[int | None, int | None],
                            near_duplicates: bool) -> None:
    from depthattn.data.scale.reader import shareable_parts

    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r} is unknown; allowed: {', '.join(EXECUTORS)}")
    if (executor == "slurm") != (slurm is not None):
        raise ValueError("the slurm executor needs SlurmOptions (a partition at least), and "
                         "only it takes them")
    if executor == "slurm" and workers is not None:
        raise ValueError(f"workers ({workers}) are the tasks run at once by the local "
                         f"executor; on Slurm every task is a job of its own")
    if not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks must be a positive integer, got {tasks!r}")
    given = [v for v in minhash if v is not None]
    if given and not near_duplicates:
        raise ValueError("minhash_buckets and minhash_hashes_per_bucket set the near-duplicate "
                         "search: they need near_duplicates (--near-duplicates)")
    if any(v < 1 for v in given):
        raise ValueError(f"minhash buckets and hashes per bucket must be positive, got "
                         f"{minhash}")
    parts = shareable_parts(source)
    if parts == 0:
        raise ValueError(f"the corpus folder {source} has no .txt or .jsonl files")
    if tasks > parts:
        raise ValueError(
            f"tasks ({tasks}) is more than the corpus can be shared by: {source} has {parts} "
            f"file(s) to read ({'.txt and .jsonl files' if Path(source).is_dir() else 'one file'}"
            f"), one task each at most; give tasks <= {parts}, or split the corpus into a folder "
            f"of more files")
    if slurm is not None and (slurm.cpus_per_task < 1 or slurm.mem_per_cpu_gb < 1):
        raise ValueError(f"slurm cpus_per_task ({slurm.cpus_per_task}) and mem_per_cpu_gb "
                         f"({slurm.mem_per_cpu_gb}) must be positive")


def _check_folders(source: str, out_dir: Path, work_dir: Path) -> None:
    """The work folder and out_dir on one filesystem (shards are moved from one to the other),
    neither inside a corpus folder (whose files the tasks list, and would then read)."""
    if source != DEFAULT_SOURCE and Path(source).is_dir():
        for what, folder in (("out_dir", out_dir), ("work_dir", work_dir)):
            if folder.is_relative_to(Path(source)):
                raise ValueError(f"{what} {folder} is inside the corpus folder {source}: its "
                                 f"files would be read as corpus; put it elsewhere")

    def device(path: Path) -> int:
        while not path.exists():
            path = path.parent
        return path.stat().st_dev

    if device(out_dir) != device(work_dir):
        raise ValueError(f"work_dir {work_dir} and out_dir {out_dir} are on different "
                         f"filesystems; the shards are moved from one to the other: give a "
                         f"work_dir on the filesystem of out_dir")


def _check_first_document(source: str, text_field: str, tasks: int) -> None:
    """Read the first document now: a missing field or column, or text that is not UTF-8,
    fails here rather than inside a task (on Slurm, in a job's log)."""
    from depthattn.data.scale.reader import task_documents

    next(task_documents(source, text_field, 0, tasks), None)


def _claim_work_dir(work_dir: Path, request: dict[str, Any]) -> None:
    path = work_dir / REQUEST_FILE
    if path.exists():
        held = read_json(path)
        if held != request:
            changed = sorted(k for k in set(held) | set(request) if held.get(k) != request.get(k))
            raise ValueError(f"{work_dir} holds the work of another preparation (it differs in "
                             f"{', '.join(changed)}); delete it or give another work_dir")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, request)


def prepare_with_datatrove(
    source: str | Path = DEFAULT_SOURCE,
    out_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int | None = None,
    tasks: int = 1,
    workers: int | None = None,
    executor: str = "local",
    slurm: SlurmOptions | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    near_duplicates: bool | None = None,
    model_vocab_size: int | None = None,
    shard_chars: int = 64 << 20,
    tokenizer_sample_chars: int | None = None,
    minhash_buckets: int | None = None,
    minhash_hashes_per_bucket: int | None = None,
) -> Path:
    """Prepare `source` into out_dir (shards + manifest.json, as `prepare` writes them) with
    datatrove; returns the manifest's path. With ``executor="slurm"`` the jobs are submitted and
    the path is where the manifest appears once the last one has run.

    tasks: how many parts the corpus is read in (at most its number of files; a `datasets`
        folder or the default corpus: any); workers: tasks at once on this machine (local;
        default: the CPUs). work_dir: signatures, samples, task shards and logs (default
        out_dir/.datatrove; on a cluster, a folder every node sees, as out_dir).
    minhash_buckets, minhash_hashes_per_bucket: the LSH of the near-duplicate search (default
        14 x 8); only with near duplicates.
    The other arguments mean what they mean for `prepare`, except that the split holds each
    document out with probability val_fraction (by a hash of seed and name) rather than
    filling the share group by group, and near copies are those of datatrove's MinHash LSH
    (word 3-grams; Jaccard, not `prepare`'s containment; no grouping of related documents).
    Exact copies are dropped in every case.
    """
    from depthattn.data.pipeline import available_cpus

    _require_datatrove()
    started = time.time()
    default = str(source) == DEFAULT_SOURCE
    vocab_size, tokenizer_sample_chars = bpe_options(tokenizer, vocab_size,
                                                     tokenizer_sample_chars)
    # resolved: tasks may run in another working directory (a Slurm job's)
    source = DEFAULT_SOURCE if default else str(Path(source).resolve())
    check_arguments(source, 1 if workers is None else workers, val_fraction, seed, shard_chars,
                    1, tokenizer_sample_chars)
    near_duplicates = default if near_duplicates is None else near_duplicates
    _check_engine_arguments(source, tasks, workers, executor, slurm,
                            (minhash_buckets, minhash_hashes_per_bucket), near_duplicates)
    workers = available_cpus() if workers is None else workers
    given = load_tokenizer(tokenizer) if tokenizer is not None else None
    check_tokenizer_choice(given, vocab_size, model_vocab_size)
    if out_dir is None:
        base = default_out_dir(source, tokenizer, vocab_size)
        out_dir = base.with_name(f"{base.name}-datatrove{tasks}")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    work_dir = Path(work_dir).resolve() if work_dir is not None else out_dir / ".datatrove"
    _check_folders(source, out_dir, work_dir)
    minhash = ({"n_grams": MINHASH_NGRAMS,
                "num_buckets": minhash_buckets or MINHASH_BUCKETS,
                "hashes_per_bucket": minhash_hashes_per_bucket or MINHASH_HASHES_PER_BUCKET}
               if near_duplicates else None)
    request: dict[str, Any] = {
        "engine": "datatrove", "tasks": tasks,
        "source": corpus.DEFAULT_SOURCE_ID if default else str(Path(source).resolve()),
        "input": corpus.ARCHIVE_SHA256 if default else input_fingerprint(Path(source)),
        "tokenizer": ({"train_vocab_size": vocab_size, "sample_chars": tokenizer_sample_chars}
                      if given is None else {"sha256": tokenizer_sha256(given)}),
        "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
        "near_duplicates": minhash, "shard_chars": shard_chars, "pack_version": PACK_VERSION,
    }
    manifest_file = out_dir / MANIFEST_NAME
    if is_prepared(out_dir, request):
        return manifest_file
    if default:
        corpus.load_default_corpus()  # downloaded once here, not by every task at once
    _check_first_document(source, text_field, tasks)
    if executor == "slurm":
        _refuse_while_jobs_run(work_dir)
    _claim_work_dir(work_dir, {**request, "out_dir": str(out_dir)})
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_files(out_dir):
        logger.info("removed %s, left by an interrupted run", path.name)
    if given is not None:
        store_given_tokenizer(out_dir, given)
    else:
        _check_trained_tokenizer_folder(out_dir, request)

    from depthattn.data.scale.stages import Stage, build_stages

    stages: list[Stage] = build_stages(
        source=source, text_field=text_field, out_dir=out_dir, work_dir=work_dir, tasks=tasks,
        train_tokenizer=given is None and not (out_dir / TOKENIZER_DIR).exists(),
        vocab_size=vocab_size, tokenizer_record=_tokenizer_record(request),
        sample_chars=tokenizer_sample_chars, seed=seed, val_fraction=val_fraction,
        shard_chars=shard_chars, minhash=minhash, request=request, launched_at=started)
    if executor == "local":
        _run_locally(stages, work_dir, workers)
        if not manifest_file.exists():  # every task was marked done, but the outputs are gone
            raise FileNotFoundError(
                f"the work folder {work_dir} says every task is done, but {manifest_file} is "
                f"missing (out_dir was cleared after a run?); delete {work_dir} and run again")
        return manifest_file
    _submit_to_slurm(stages, work_dir, slurm)  # type: ignore[arg-type]
    logger.info("submitted %d Slurm jobs; %s appears when the last one has run", len(stages),
                manifest_file)
    return manifest_file


def _tokenizer_record(request: dict[str, Any]) -> dict[str, Any]:
    """What a tokenizer trained here was trained on, kept beside it."""
    return {"engine": "datatrove", "tasks": request["tasks"], "input": request["input"],
            "text_field": request["text_field"], "seed": request["seed"],
            "val_fraction": request["val_fraction"], **request["tokenizer"]}


def _check_trained_tokenizer_folder(out_dir: Path, request: dict[str, Any]) -> None:
    from depthattn.data.scale.tokenizer_steps import TRAINING_RECORD

    folder = out_dir / TOKENIZER_DIR
    if folder.exists():
        record_path = folder / TRAINING_RECORD
        stored = read_json(record_path) if record_path.exists() else None
        if stored != _tokenizer_record(request):
            raise ValueError(f"{folder} holds a tokenizer made for other inputs "
                             f"({stored or 'not trained here'}); use another out_dir or "
                             f"delete {out_dir}")


def _run_locally(stages, work_dir: Path, workers: int) -> None:
    from datatrove.executor import LocalPipelineExecutor

    for number, stage in enumerate(stages, 1):
        logger.info("stage %d/%d: %s (%d task%s)", number, len(stages), stage.name,
                    stage.tasks, "" if stage.tasks == 1 else "s")
        LocalPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks,
                              workers=min(workers, stage.tasks),
                              logging_dir=str(work_dir / "logs" / stage.name)).run()


def _refuse_while_jobs_run(work_dir: Path) -> None:
    """A second submission while the first chain is queued or running would run the same tasks
    twice at once (their completion is not marked yet): refused while squeue lists a job."""
    path = work_dir / JOBS_FILE
    if not path.exists() or shutil.which("squeue") is None:
        return
    ids = [str(i) for i in read_json(path) if str(i) != "-1"]
    if not ids:
        return
    listed = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(ids)}"],
                            capture_output=True, text=True, check=False).stdout.split()
    if listed:
        raise ValueError(f"the Slurm jobs {', '.join(listed)} of this preparation are still "
                         f"queued or running; submit again once they have ended (scancel them "
                         f"to start over)")


def _submit_to_slurm(stages, work_dir: Path, slurm: SlurmOptions) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    env_command = slurm.env_command
    if env_command is None and sys.prefix != sys.base_prefix:  # this virtual environment
        env_command = f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    extra = {k: str(v) for k, v in slurm.sbatch_args.items()}  # (a 0 would be dropped)
    qos = extra.pop("qos", "normal")  # datatrove sets qos after the extra arguments
    executors = []
    for stage in stages:
        executors.append(SlurmPipelineExecutor(
            pipeline=stage.pipeline, tasks=stage.tasks, time=slurm.time,
            partition=slurm.partition, cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb, job_name=f"{slurm.job_name}-{stage.name}",
            logging_dir=str(work_dir / "logs" / stage.name),
            slurm_logs_folder=str(work_dir / "slurm_logs" / stage.name), qos=qos,
            env_command=env_command, sbatch_args=extra,
            depends=executors[-1] if executors else None))
    executors[-1].run()  # launches the chain, first stage first
    write_json_atomic(work_dir / JOBS_FILE, [e.job_id for e in executors])
