"""Bounded memory: `prepare` (the datatrove engine, local executor, its tasks run in this
process) of a corpus several times larger than a memory limit it runs under.

The limit is RLIMIT_DATA (private writable memory: the heap and anonymous maps, what a corpus
held in Python strings would take), set in a fresh process to what it uses after a warm-up
preparation (imports, tokenizer threads, allocator arenas) plus a margin; the corpus is several
margins large. RLIMIT_AS would count the address space that torch, transformers and the
allocator's arenas reserve without using, a number that moves with library versions. A
preparation that held the corpus would fail (shown by the second test, which holds it); the
streaming one passes with room to spare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("resource")

_CHILD = r"""
import json, resource, sys
from pathlib import Path

from depthattn.data.engine import reader
from depthattn.data.prepared import read_manifest
from depthattn.data.prepare_text import prepare

args = json.loads(sys.argv[1])
work = Path(args["work"])
common = dict(num_workers=1, val_fraction=0.05, shard_chars=args["shard_chars"],
              progress=False, near_duplicates=args["near_duplicates"],
              tokenizer_sample_chars=args["sample_chars"], **args["tokenizer"])
prepare(work / "warmup.jsonl", out_dir=work / "warmup", **common)

def data_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024

limit = data_bytes() + args["margin"]
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
if args["hold_everything"]:  # the broken variant: a task's documents all kept in memory
    streaming = reader.task_documents
    reader.task_documents = lambda *a: iter(list(streaming(*a)))
manifest = prepare(work / "corpus.jsonl", out_dir=work / "out", **common)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"num_tokens": read_manifest(manifest)["num_tokens"], "limit": limit,
                  "peak_rss": peak}))
"""

# long words, few tokens per byte; letters only, so that near-duplicate search sees 2000 words
WORDS = ["".join(chr(97 + i // 26**k % 26) for k in range(4)) + "wordtext" for i in range(2000)]


def write_jsonl(path: Path, chars: int, seed: int, bodies: int = 16) -> int:
    """JSONL documents of ≈ 40k characters of those words; each document starts with its own
    number, so none is an exact copy; the bodies repeat every `bodies` documents (0: never,
    so that none is a near copy either)."""
    import random

    rng = random.Random(seed)

    def body() -> str:
        words = rng.choices(WORDS, k=3000)
        return "\n".join(" ".join(words[i:i + 16]) for i in range(0, len(words), 16))

    fixed = [body() for _ in range(bodies)]
    written, n = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < chars:
            text = f"document {n}\n{fixed[n % bodies] if bodies else body()}"
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text)
            n += 1
    return n


def word_level_tokenizer(path: Path) -> Path:
    """A whitespace word-level tokenizer: encodes at tens of MB/s, so the test stays short."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from depthattn.data.tokenizer import EOS_TOKEN, PAD_TOKEN

    vocab = {w: i for i, w in enumerate([EOS_TOKEN, PAD_TOKEN, "[UNK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(path))
    return path


def run_limited(work: Path, corpus_chars: int, margin: int, tokenizer: dict,
                near_duplicates: bool = False, hold_everything: bool = False,
                sample_chars: int = 2_000_000, timeout: float = 600):
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "warmup.jsonl", 400_000, seed=1)
    # searched for near copies, the corpus has none (repeated bodies would all be dropped)
    n_docs = write_jsonl(work / "corpus.jsonl", corpus_chars, seed=0,
                         bodies=0 if near_duplicates else 16)
    args = {"work": str(work), "margin": margin, "shard_chars": 4 << 20,
            "near_duplicates": near_duplicates, "hold_everything": hold_everything,
            # a sample only for a BPE to train: beside a given tokenizer it is refused
            "sample_chars": None if "tokenizer" in tokenizer else sample_chars,
            "tokenizer": tokenizer}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    return done, n_docs


MARGIN = 24 << 20  # the corpus is 4 of these


def test_prepare_streams_a_corpus_four_times_its_memory_limit(tmp_path):
    tok = {"tokenizer": str(word_level_tokenizer(tmp_path / "tok.json"))}
    done, n_docs = run_limited(tmp_path / "w", 4 * MARGIN, MARGIN, tok)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # one token per word and per document separator
    assert result["num_tokens"] == n_docs * (3000 + 2 + 1)


def test_the_limit_catches_a_corpus_held_in_memory(tmp_path):
    tok = {"tokenizer": str(word_level_tokenizer(tmp_path / "tok.json"))}
    done, _ = run_limited(tmp_path / "w", 4 * MARGIN, MARGIN, tok, hold_everything=True)
    assert done.returncode != 0 and "MemoryError" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_prepare_with_near_duplicates_and_a_trained_bpe_under_the_limit(tmp_path):
    """The whole text path: datatrove's MinHash stages, a BPE trained on a 2 M-character
    sample, 256 MB."""
    done, n_docs = run_limited(tmp_path / "w", 8 * MARGIN, 2 * MARGIN,
                               {"vocab_size": 2048}, near_duplicates=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["num_tokens"] > n_docs * 3000


def test_the_memory_benchmark_runs(tmp_path, capsys):
    """benchmarks/prepare_memory.py at a tiny size."""
    from benchmarks import prepare_memory

    out = tmp_path / "rows.json"
    prepare_memory.main(["--sizes", "200K", "--work", str(tmp_path), "--tasks", "2",
                         "--num-workers", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["size"], r["tasks"]) for r in rows] == [("200K", 2)] and rows[0]["tokens"] > 0
    assert 0 < rows[0]["largest_rss_gib"] <= rows[0]["total_rss_gib"] < 8
    assert "| 200K | 2 × 1 |" in capsys.readouterr().out
