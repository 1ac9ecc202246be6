"""`run_datatrove`: the stages of `depthattn.data.engine`, run locally one after the other, or
submitted to Slurm as a chain of array jobs. A rerun resumes (datatrove skips the tasks it marked
complete); the work folder belongs to one request (`request.json`), another is refused."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthattn.data.clean import clean_text
from depthattn.data.engine.reader import shareable_parts
from depthattn.data.prepared import (
    MANIFEST_NAME,
    TOKENIZER_DIR,
    has_trained_tokenizer,
    is_prepared,
    read_json,
    remove_stale_temp_files,
    store_given_tokenizer,
)
from depthattn.data.sources import iter_local_source
from depthattn.data.split import is_validation
from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
REQUEST_FILE = "request.json"
JOBS_FILE = "slurm_jobs.json"  # the ids of the last submission
WORK_DIR = ".datatrove"  # in out_dir, unless a work_dir is given
# Word 3-grams; 14 bands of 8 hashes (datatrove's and FineWeb's LSH): pairs of Jaccard similarity
# about 0.75 and more are found (0.5: 5 %).
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


def check_engine_arguments(source: str, tasks: int, workers: int | None, executor: str,
                           slurm: SlurmOptions | None, minhash: tuple[int | None, int | None],
                           near_duplicates: bool) -> None:
    if executor not in EXECUTORS:
        raise DepthAttnError(f"executor {executor!r} is unknown; allowed: {', '.join(EXECUTORS)}")
    if (executor == "slurm") != (slurm is not None):
        raise DepthAttnError("the slurm executor needs SlurmOptions (a partition at least), and "
                             "only it takes them")
    if executor == "slurm" and workers is not None:
        raise DepthAttnError(f"workers ({workers}) are the tasks run at once by the local "
                             f"executor; on Slurm every task is a job of its own")
    if workers is not None and workers < 1:
        raise DepthAttnError(f"num_workers must be at least 1, got {workers}")
    if not isinstance(tasks, int) or tasks < 1:
        raise DepthAttnError(f"tasks must be a positive integer, got {tasks!r}")
    given = [v for v in minhash if v is not None]
    if given and not near_duplicates:
        raise DepthAttnError("minhash_buckets and minhash_hashes_per_bucket set the near-duplicate "
                             "search: they need near_duplicates (--near-duplicates)")
    if any(v < 1 for v in given):
        raise DepthAttnError(f"minhash buckets and hashes per bucket must be positive, got "
                             f"{minhash}")
    parts = shareable_parts(source)
    if parts == 0:
        raise DepthAttnError(f"the corpus folder {source} has no .txt or .jsonl files")
    if tasks > parts:
        raise DepthAttnError(
            f"tasks ({tasks}) is more than the corpus can be shared by: {source} has {parts} "
            f"file(s) to read ({'.txt and .jsonl files' if Path(source).is_dir() else 'one file'}"
            f"), one task each at most; give tasks <= {parts}, or split the corpus into a folder "
            f"of more files")
    if slurm is not None and (slurm.cpus_per_task < 1 or slurm.mem_per_cpu_gb < 1):
        raise DepthAttnError(f"slurm cpus_per_task ({slurm.cpus_per_task}) and mem_per_cpu_gb "
                             f"({slurm.mem_per_cpu_gb}) must be positive")


def minhash_request(near_duplicates: bool, buckets: int | None,
                    hashes_per_bucket: int | None) -> dict[str, int] | None:
    """The LSH of the near-duplicate search, defaults filled in (None: exact copies only)."""
    if not near_duplicates:
        return None
    return {"n_grams": MINHASH_NGRAMS, "num_buckets": buckets or MINHASH_BUCKETS,
            "hashes_per_bucket": hashes_per_bucket or MINHASH_HASHES_PER_BUCKET}


def _check_folders(source: str, out_dir: Path, work_dir: Path) -> None:
    """The work folder and out_dir on one filesystem (shards are moved from one to the other),
    neither inside a corpus folder (whose files the tasks list, and would then read)."""
    if Path(source).is_dir():
        for what, folder in (("out_dir", out_dir), ("work_dir", work_dir)):
            if folder.is_relative_to(Path(source)):
                raise DepthAttnError(f"{what} {folder} is inside the corpus folder {source}: its "
                                     f"files would be read as corpus; put it elsewhere")

    def device(path: Path) -> int:
        while not path.exists():
            path = path.parent
        return path.stat().st_dev

    if device(out_dir) != device(work_dir):
        raise DepthAttnError(f"work_dir {work_dir} and out_dir {out_dir} are on different "
                             f"filesystems; the shards are moved from one to the other: give a "
                             f"work_dir on the filesystem of out_dir")


def _check_documents(source: str, text_field: str, seed: int, val_fraction: float) -> None:
    """Read the corpus until it shows a training and a validation document, so that a bad
    field, non-UTF-8 text or a corpus too small for the split fail here, not inside a task
    (beyond a million documents on one side, the manifest stage's check decides)."""
    read, sides = 0, set()
    for doc in iter_local_source(Path(source), text_field):  # as given: named so in errors
        read += 1
        if clean_text(doc.text):
            sides.add(is_validation(seed, doc.name, val_fraction))
            if len(sides) == 2 or read >= 1_000_000:
                return
    if not sides:
        raise DepthAttnError(f"the corpus {source} is empty: {read} document(s), none with text")
    side = "validation" if True in sides else "training"
    raise DepthAttnError(
        f"the corpus {source} is too small for val_fraction {val_fraction}: all of its "
        f"{read} document(s) with text fall on the {side} side of the split (each is held out "
        f"with probability val_fraction, by a hash of seed {seed} and its name); give more "
        f"documents, another val_fraction or another seed")


def _claim_work_dir(work_dir: Path, request: dict[str, Any]) -> None:
    path = work_dir / REQUEST_FILE
    if path.exists():
        held = read_json(path)
        if held != request:
            changed = sorted(k for k in set(held) | set(request) if held.get(k) != request.get(k))
            raise DepthAttnError(f"{work_dir} holds the work of another preparation (it differs in "
                                 f"{', '.join(changed)}); delete it or give another work_dir")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, request)


def run_datatrove(source: str, out_dir: Path, work_dir: str | Path | None, given,
                  request: dict[str, Any], workers: int | None, executor: str,
                  slurm: SlurmOptions | None) -> Path:
    """Prepare the local corpus `source` into out_dir for `request` (checked by `prepare`);
    returns the manifest's path (on Slurm, where it appears once the last job has run)."""
    from depthattn.data.engine.stages import Stage, build_stages

    launched_at = time.time()
    out_dir = out_dir.resolve()
    resolved = str(Path(source).resolve())  # tasks may run in another working directory
    work_dir = Path(work_dir).resolve() if work_dir is not None else out_dir / WORK_DIR
    _check_folders(resolved, out_dir, work_dir)
    manifest_file = out_dir / MANIFEST_NAME
    if is_prepared(out_dir, request):
        return manifest_file
    _check_documents(source, request["text_field"], request["seed"], request["val_fraction"])
    if executor == "slurm":
        _refuse_while_jobs_run(work_dir)
    _claim_work_dir(work_dir, {**request, "out_dir": str(out_dir)})
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    if given is not None:
        store_given_tokenizer(out_dir, given)
    else:
        has_trained_tokenizer(out_dir, _tokenizer_record(request))

    trained = request["tokenizer"].get("train_vocab_size")
    stages: list[Stage] = build_stages(
        source=resolved, text_field=request["text_field"], out_dir=out_dir, work_dir=work_dir,
        tasks=request["tasks"],
        train_tokenizer=given is None and not (out_dir / TOKENIZER_DIR).exists(),
        vocab_size=trained, tokenizer_record=_tokenizer_record(request),
        sample_chars=request["tokenizer"].get("sample_chars"), seed=request["seed"],
        val_fraction=request["val_fraction"], shard_chars=request["shard_chars"],
        minhash=request["near_duplicates"], request=request, launched_at=launched_at)
    if executor == "local":
        _run_locally(stages, work_dir, available_cpus() if workers is None else workers)
        if not manifest_file.exists():  # every task was marked done, but the outputs are gone
            raise FileNotFoundError(
                f"the work folder {work_dir} says every task is done, but {manifest_file} is "
                f"missing (out_dir was cleared after a run?); delete {work_dir} and run again")
        return manifest_file
    _submit_to_slurm(stages, work_dir, slurm)  # type: ignore[arg-type]
    logger.info("submitted %d Slurm jobs; %s appears when the last one has run", len(stages),
                manifest_file)
    return manifest_file


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects taskset/cgroup limits, unlike cpu_count
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _tokenizer_record(request: dict[str, Any]) -> dict[str, Any]:
    """What a tokenizer trained here was trained on, kept beside it."""
    return {"engine": "datatrove", "tasks": request["tasks"], "input": request["input"],
            "text_field": request["text_field"], "seed": request["seed"],
            "val_fraction": request["val_fraction"], **request["tokenizer"]}


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
        raise DepthAttnError(f"the Slurm jobs {', '.join(listed)} of this preparation are still "
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
