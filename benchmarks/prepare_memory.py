"""Peak memory and throughput of `depthattn prepare` on synthetic JSONL corpora of given sizes.

    python -m benchmarks.prepare_memory                          # 10 MB and 100 MB, this checkout
    python -m benchmarks.prepare_memory --sizes 10M 100M 1G --before /tmp/before/src
    python -m benchmarks.prepare_memory --sizes 1G --skip-before 1G --json prepare.json
    python -m benchmarks.prepare_memory --sizes 100M --engines local datatrove --tasks 4

The corpora are pseudo-English: 50k made-up words drawn from a Zipf law, documents of 200-5000
words, written once into --work (default /tmp/prepare_bench) and reused. Each run is a fresh
Python process that prepares one corpus into an empty folder with a trained BPE (vocab 8192,
exact-copy removal only, as local sources get by default) and reports its own peak RSS and its
pool workers' (``resource.getrusage`` self and children ``ru_maxrss``; the larger is the peak
of any one process). tokens/s = tokens written / wall time of the whole preparation, tokenizer
training included.

--before SRC runs the same corpora with another checkout's ``src`` (e.g. a `git worktree` of an
older commit), first on the smaller sizes; where both ran, the two manifests' splits must be
identical (same documents, split, shard files and checksums), or the script fails; above
100 M characters the tokenizer now trains on a sample, so the tokens differ and are not compared.

--engines local datatrove runs each corpus through both engines (`prepare` and
`prepare --engine datatrove` on the local executor, --tasks parts, --num-workers at once; the
corpus then dealt line by line into a folder of --tasks JSONL files); the table gives each
engine's tokens/s against the local engine's of the same corpus in the same run.
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

from depthattn.data.defaults import DEFAULT_TOKENIZER_SAMPLE_CHARS

_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9}
_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from depthattn.data.pipeline import prepare
from depthattn.data.manifest import read_manifest
started = time.perf_counter()
if sys.argv[5] == "local":
    manifest = prepare(sys.argv[2], out_dir=sys.argv[3], num_workers=int(sys.argv[4]),
                       progress=False)
else:
    import logging
    from datatrove.utils.logging import logger
    logger.remove()  # the per-task logs, not the measurement
    from depthattn.data.scale.engine import prepare_with_datatrove
    manifest = prepare_with_datatrove(sys.argv[2], out_dir=sys.argv[3],
                                      workers=int(sys.argv[4]), tasks=int(sys.argv[6]))
seconds = time.perf_counter() - started
kib = lambda who: resource.getrusage(who).ru_maxrss
print(json.dumps({"seconds": seconds, "num_tokens": read_manifest(manifest)["num_tokens"],
                  "self_kib": kib(resource.RUSAGE_SELF),
                  "workers_kib": kib(resource.RUSAGE_CHILDREN)}))
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


def deal_into_parts(corpus: Path, parts: int) -> Path:
    """The corpus's lines dealt round-robin into a folder of `parts` JSONL files (once)."""
    folder = corpus.with_name(f"{corpus.stem}-parts{parts}")
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as files:
        outs = [files.enter_context(open(tmp / f"part{k:03d}.jsonl", "w", encoding="utf-8"))
                for k in range(parts)]
        with open(corpus, encoding="utf-8") as f:
            for i, line in enumerate(f):
                outs[i % parts].write(line)
    os.replace(tmp, folder)
    return folder


def run_one(src: Path, corpus: Path, num_workers: int, engine: str = "local",
            tasks: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as out:
        env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "true"}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(corpus),
                               str(Path(out) / "prepared"), str(num_workers), engine,
                               str(tasks)],
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"prepare with {src} on {corpus} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["splits"] = json.loads((Path(out) / "prepared" / "manifest.json").read_text(
            encoding="utf-8"))["splits"]
    result["peak_gib"] = max(result["self_kib"], result["workers_kib"]) / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"],
                        help="corpus sizes in characters, e.g. 10M 100M 1G")
    parser.add_argument("--before", type=Path, default=None,
                        help="the src folder of another checkout to compare with")
    parser.add_argument("--skip-before", nargs="*", default=[],
                        help="sizes not to run with --before (too large for its memory)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["local"],
                        choices=["local", "datatrove"])
    parser.add_argument("--tasks", type=int, default=4, help="datatrove engine: corpus parts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prepare_bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[1] / "src"
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size_text in args.sizes:
        size = parse_size(size_text)
        corpus = synthesize(args.work / f"corpus-{size_text}.jsonl", size)
        runs = {}
        if "local" in args.engines:
            runs["after"] = run_one(here, corpus, args.num_workers)
        if "datatrove" in args.engines:
            runs[f"datatrove x{args.tasks}"] = run_one(
                here, deal_into_parts(corpus, args.tasks), args.num_workers, "datatrove",
                args.tasks)
        if args.before is not None and size_text not in args.skip_before:
            runs["before"] = run_one(args.before, corpus, args.num_workers)
            # a tokenizer sample that is not the whole training split makes other tokens
            same_tokenizer = size <= DEFAULT_TOKENIZER_SAMPLE_CHARS
            if same_tokenizer and runs["before"]["splits"] != runs["after"]["splits"]:
                raise SystemExit(f"{size_text}: before and after wrote different shards")
        local = runs.get("after")
        for name, r in runs.items():
            ratio = (r["num_tokens"] / r["seconds"]) / (local["num_tokens"] / local["seconds"]) \
                if local else None
            rows.append({"size": size_text, "code": name, "tokens": r["num_tokens"],
                         "vs_local": None if ratio is None else round(ratio, 2),
                         "seconds": round(r["seconds"], 1),
                         "tokens_per_s": round(r["num_tokens"] / r["seconds"]),
                         "peak_rss_gib": round(r["peak_gib"], 3),
                         "main_rss_gib": round(r["self_kib"] / 2**20, 3),
                         "worker_rss_gib": round(r["workers_kib"] / 2**20, 3)})
        print(f"{size_text}: {json.dumps(rows[-len(runs):])}", file=sys.stderr, flush=True)
    print("| corpus | code | tokens | s | tokens/s | tokens/s vs local | peak RSS GiB "
          "(main / worker) |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = "" if r["vs_local"] is None else f"{r['vs_local']:.2f}"
        print(f"| {r['size']} | {r['code']} | {r['tokens']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} | {vs} | {r['peak_rss_gib']} ({r['main_rss_gib']} / "
              f"{r['worker_rss_gib']}) |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    raise SystemExit(code)
