"""Peak memory and throughput of `depthattn prepare` (the datatrove engine, local executor) on
synthetic JSONL corpora of given sizes.

    python -m benchmarks.prepare_memory                          # 10 MB and 100 MB
    python -m benchmarks.prepare_memory --sizes 10M 100M 1G --tasks 4 --num-workers 2
    python -m benchmarks.prepare_memory --sizes 1G --json prepare.json

The corpora are pseudo-English: 50k made-up words drawn from a Zipf law, documents of 200-5000
words, written once into --work (default /tmp/prepare_bench) and reused, then dealt line by line
into a folder of --tasks JSONL files (the engine shares a corpus by file). Each run is a fresh
Python process that prepares one corpus into an empty folder with a trained BPE (vocab 8192,
exact-copy removal only, as local corpora get by default), --tasks parts, --num-workers at once.
The table gives tokens/s (tokens written / wall time of the whole preparation, tokenizer
training included) and peak resident memory: of the largest process, and of all the processes
of the preparation together (sampled from /proc every 0.1 s; shared pages count in each).

Correctness first: every prepared folder must verify (each shard's size and sha256, the
tokenizer's hash: `verify_prepared`) and keep every document of the corpus, none twice
(the corpus has no exact copies); otherwise the script fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9}
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CHILD = """
import json, resource, sys, time
from datatrove.utils.logging import logger
logger.remove()  # the per-task logs, not the measurement
from depthattn.data.prepare_text import prepare
from depthattn.data.prepared import read_manifest, verify_prepared
started = time.perf_counter()
manifest = prepare(sys.argv[1], out_dir=sys.argv[2], num_workers=int(sys.argv[3]),
                   tasks=int(sys.argv[4]), progress=False)
seconds = time.perf_counter() - started
verify_prepared(manifest)
splits = read_manifest(manifest)["splits"]
print(json.dumps({"seconds": seconds, "num_tokens": sum(s["num_tokens"] for s in splits.values()),
                  "documents": sum(s["num_documents"] for s in splits.values()),
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def parse_size(text: str) -> int:
    text = text.upper().removesuffix("B")
    return int(float(text[:-1]) * _SUFFIX[text[-1]]) if text[-1] in _SUFFIX else int(text)


def synthesize(path: Path, size: int, seed: int = 0) -> Path:
    """A JSONL corpus of about `size` bytes of text (written once; reused when present)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    freq = 1.0 / np.arange(1, 27) ** 0.9
    lengths = rng.integers(2, 11, size=50_000)
    words = np.array(["".join(rng.choice(letters, n, p=freq / freq.sum())) for n in lengths])
    zipf = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    zipf /= zipf.sum()
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        while written < size:
            ids = rng.choice(len(words), int(rng.integers(200, 5000)), p=zipf)
            lines = [" ".join(words[ids[i:i + 12]].tolist()) for i in range(0, len(ids), 12)]
            text = ".\n".join(lines) + "."
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text)
    os.replace(tmp, path)
    return path


def deal_into_parts(corpus: Path, parts: int) -> tuple[Path, int]:
    """The corpus's lines dealt round-robin into a folder of `parts` JSONL files (once);
    returns the folder and the number of documents."""
    folder = corpus.with_name(f"{corpus.stem}-parts{parts}")
    if not folder.exists():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            outs = [files.enter_context(open(tmp / f"part{k:03d}.jsonl", "w", encoding="utf-8"))
                    for k in range(parts)]
            with open(corpus, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    outs[i % parts].write(line)
        os.replace(tmp, folder)
    with open(corpus, encoding="utf-8") as f:
        return folder, sum(1 for _ in f)


def tree_rss(pid: int) -> tuple[int, int]:
    """(largest, total) resident bytes of process `pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    sizes, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError, IndexError, ValueError):
            sizes.append(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE)
    return max(sizes, default=0), sum(sizes)


def run_one(corpus: Path, num_workers: int, tasks: int) -> dict:
    """One preparation in a fresh process, its process tree's memory sampled meanwhile."""
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as out:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen([sys.executable, "-c", _CHILD, str(corpus),
                                      str(Path(out) / "prepared"), str(num_workers), str(tasks)],
                                     stdout=stdout, stderr=stderr, env=env)
            largest = total = 0
            while child.poll() is None:
                one, every = tree_rss(child.pid)
                largest, total = max(largest, one), max(total, every)
                time.sleep(0.1)
            stdout.seek(0)
            stderr.seek(0)
            if child.returncode != 0:
                raise RuntimeError(f"prepare of {corpus} failed:\n{stderr.read()[-3000:]}")
            result = json.loads(stdout.read().strip().splitlines()[-1])
    largest = max(largest, result["self_kib"] * 1024)  # the sampling may miss a short peak
    result["largest_gib"], result["total_gib"] = largest / 2**30, max(total, largest) / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"],
                        help="corpus sizes in characters, e.g. 10M 100M 1G")
    parser.add_argument("--num-workers", type=int, default=2, help="tasks at once")
    parser.add_argument("--tasks", type=int, default=4, help="corpus parts (files)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prepare_bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size_text in args.sizes:
        corpus = synthesize(args.work / f"corpus-{size_text}.jsonl", parse_size(size_text))
        folder, documents = deal_into_parts(corpus, args.tasks)
        r = run_one(folder, args.num_workers, args.tasks)
        if r["documents"] != documents:
            raise SystemExit(f"{size_text}: {r['documents']} documents prepared, the corpus "
                             f"has {documents}")
        rows.append({"size": size_text, "tasks": args.tasks, "workers": args.num_workers,
                     "tokens": r["num_tokens"], "seconds": round(r["seconds"], 1),
                     "tokens_per_s": round(r["num_tokens"] / r["seconds"]),
                     "largest_rss_gib": round(r["largest_gib"], 3),
                     "total_rss_gib": round(r["total_gib"], 3)})
        print(f"{size_text}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print("| corpus | tasks × workers | tokens | s | tokens/s | peak RSS GiB, largest process | "
          "all processes |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['tasks']} × {r['workers']} | {r['tokens']:,} | {r['seconds']} "
              f"| {r['tokens_per_s']:,} | {r['largest_rss_gib']} | {r['total_rss_gib']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    raise SystemExit(code)
