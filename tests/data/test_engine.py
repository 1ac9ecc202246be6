"""`prepare`'s engine for local corpora, datatrove (`depthattn.data.engine`): the manifest and
shards training reads, near copies found by datatrove's MinHash stages, resume, the Slurm
executor, and every bad input refused before work starts."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from depthattn.cli import main
from depthattn.data import TokenStream
from depthattn.data.clean import clean_text
from depthattn.data.engine.run import SlurmOptions
from depthattn.data.engine.shards import WriteTokenShards
from depthattn.data.engine.tokenizer_steps import TokenizerSample, sample_file
from depthattn.data.prepare_text import prepare
from depthattn.data.prepared import verify_prepared
from depthattn.data.split import is_validation, sample_draw
from depthattn.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from tests.conftest import make_text

VOCAB = 300


def write_jsonl_folder(folder: Path, texts: list[str], files: int) -> dict[str, str]:
    """texts dealt over `files` JSONL files; returns {document name: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for f in range(files):
        with open(folder / f"part{f}.jsonl", "w") as out:
            for line, text in enumerate(texts[f::files], start=1):
                out.write(json.dumps({"text": text}) + "\n")
                names[f"part{f}.jsonl:{line}"] = text
    return names


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str], list[str]]:
    """40 documents in 4 files, plus an exact copy of text 3 and a near copy of text 7 (two
    words more): (folder, {name: text}, the 42 texts)."""
    texts = [make_text(i, 300) for i in range(40)]
    texts += [texts[3], texts[7] + " and so"]
    folder = tmp_path_factory.mktemp("engine") / "corpus"
    return folder, write_jsonl_folder(folder, texts, 4), texts


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    """The corpus prepared on 2 tasks, near copies on, a BPE trained on the tasks' samples."""
    folder, _, _ = corpus
    out = tmp_path_factory.mktemp("built") / "prepared"
    return prepare(folder, out_dir=out, tasks=2, num_workers=2, vocab_size=VOCAB,
                                  near_duplicates=True)


def split_documents(manifest: Path, split: str) -> list[str]:
    """The texts of a split's documents, decoded from its shards in order."""
    tok = load_tokenizer(manifest.parent / "tokenizer")
    stream = TokenStream(manifest, split)
    tokens = stream.read(0, len(stream))
    ends = np.flatnonzero(tokens == tok.eos_token_id)
    starts = np.r_[0, ends[:-1] + 1]
    return [tok.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


def test_the_manifest_and_shards_are_what_training_reads(built, corpus):
    _, names, _ = corpus
    verify_prepared(built)  # every shard of the size and sha256 listed, the tokenizer's hash
    manifest = json.loads(built.read_text())
    assert manifest["request"]["engine"] == "datatrove" and manifest["request"]["tasks"] == 2
    for split in ("train", "validation"):
        listed = manifest["splits"][split]["documents"]
        # token for token, every document is its cleaned text, in the listed order
        assert split_documents(built, split) == [clean_text(names[n]) for n in listed]
        for name in listed:  # held out by a hash of (seed, name), written out independently
            draw = int.from_bytes(hashlib.sha256(f"0:{name}".encode()).digest()[:8], "little")
            assert (draw / 2**64 < 0.05) == (split == "validation")
        assert manifest["splits"][split]["num_documents"] == len(listed)
    assert not set(manifest["splits"]["train"]["documents"]) & \
        set(manifest["splits"]["validation"]["documents"])


def test_minhash_drops_the_planted_copies_and_nothing_else(built, corpus):
    _, names, texts = corpus
    manifest = json.loads(built.read_text())
    kept = manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"]
    kept_texts = [names[n] for n in kept]
    # of the 42: one of the two copies of text 3, one of text 7 and its near copy
    assert len(kept) == 40 and kept_texts.count(texts[3]) == 1
    assert (texts[7] in kept_texts) != (texts[41] in kept_texts)
    assert set(texts[:40]) - {texts[7]} <= set(kept_texts)


def test_a_rerun_returns_at_once_and_another_request_is_refused(built, corpus):
    folder, _, _ = corpus
    before = built.stat().st_mtime_ns
    again = prepare(folder, out_dir=built.parent, tasks=2, num_workers=2,
                                   vocab_size=VOCAB, near_duplicates=True)
    assert again == built and built.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"holds the work of another preparation \(it differs "
                                         r"in seed\)"):
        prepare(folder, out_dir=built.parent, tasks=2, num_workers=2,
                               vocab_size=VOCAB, near_duplicates=True, seed=1)


def test_an_interrupted_shards_stage_resumes(corpus, tmp_path, monkeypatch):
    folder, _, _ = corpus
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    original = WriteTokenShards.run

    def fail_on_task_1(self, data, rank=0, world_size=1):
        if rank == 1:
            raise RuntimeError("killed")
        yield from original(self, data, rank, world_size)

    monkeypatch.setattr(WriteTokenShards, "run", fail_on_task_1)
    kwargs = {"out_dir": tmp_path / "out", "tokenizer": tok_path, "tasks": 2, "num_workers": 1}
    with pytest.raises(RuntimeError, match="killed"):
        prepare(folder, **kwargs)
    assert not (tmp_path / "out" / "manifest.json").exists()
    done = tmp_path / "out" / ".datatrove" / "tasks" / "00000" / "summary.json"
    first = done.stat().st_mtime_ns
    monkeypatch.setattr(WriteTokenShards, "run", original)
    manifest = prepare(folder, **kwargs)
    verify_prepared(manifest)
    assert done.stat().st_mtime_ns == first  # task 0 was not run again
    assert json.loads(manifest.read_text())["splits"]["train"]["num_documents"] > 0


def test_the_tokenizer_sample_is_each_tasks_smallest_draws_of_training_documents(tmp_path):
    from datatrove.data import Document

    docs = [Document(text=make_text(i, 50), id=f"d{i}") for i in range(30)]
    step = TokenizerSample(str(tmp_path), sample_chars=2000, seed=0, val_fraction=0.2)
    assert [d.id for d in step.run(iter(docs), rank=1, world_size=2)] == [d.id for d in docs]
    sample = [json.loads(x)["text"] for x in sample_file(tmp_path, 1).read_text().splitlines()]
    quota = math.ceil(2000 / 2)
    assert sum(map(len, sample)) == quota
    train = sorted((d for d in docs if not is_validation(0, d.id, 0.2)),
                   key=lambda d: sample_draw(0, d.id))
    expected, left = [], quota
    for d in train:
        if left <= 0:
            break
        expected.append(d.text[:left])
        left -= min(left, len(d.text))
    assert sample == expected


def test_an_interrupted_manifest_stage_finds_its_moved_shards(corpus, tmp_path, monkeypatch):
    from depthattn.data.engine import shards

    folder, _, _ = corpus
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    original = shards.finish_prepared

    def fail_after_the_moves(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shards, "finish_prepared", fail_after_the_moves)
    kwargs = {"out_dir": tmp_path / "out", "tokenizer": tok_path, "tasks": 2, "num_workers": 1}
    with pytest.raises(OSError, match="disk full"):
        prepare(folder, **kwargs)
    assert list((tmp_path / "out").glob("train-*.npy"))  # moved, not yet listed
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(shards, "finish_prepared", original)
    verify_prepared(prepare(folder, **kwargs))


def test_outputs_removed_after_a_run_are_named(corpus, tmp_path):
    folder, _, _ = corpus
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    kwargs = {"out_dir": tmp_path / "out", "tokenizer": tok_path, "tasks": 2, "num_workers": 1}
    manifest = prepare(folder, **kwargs)
    manifest.unlink()
    with pytest.raises(FileNotFoundError, match=r"says every task is done, but .*manifest.json "
                                                r"is missing"):
        prepare(folder, **kwargs)
    with pytest.raises(ValueError, match=r"holds the work of another preparation \(it differs "
                                         r"in out_dir\)"):
        prepare(folder, **{**kwargs, "out_dir": tmp_path / "elsewhere",
                                          "work_dir": tmp_path / "out" / ".datatrove"})


def test_the_ledger_refuses_a_corpus_that_changed_between_stages(tmp_path):
    from datatrove.data import Document

    from depthattn.data.engine.reader import DocumentLedger

    docs = [Document(text="x", id=f"d{i}") for i in range(5)]
    list(DocumentLedger(str(tmp_path), check=False).run(iter(docs), rank=3))
    assert len(list(DocumentLedger(str(tmp_path), check=True).run(iter(docs), rank=3))) == 5
    with pytest.raises(RuntimeError, match=r"task 3 read other documents than in the first "
                                           r"stage \(6 now, 5 then"):
        list(DocumentLedger(str(tmp_path), check=True).run(
            iter([*docs, Document(text="y", id="new")]), rank=3))
    with pytest.raises(RuntimeError, match="names differ: True"):
        list(DocumentLedger(str(tmp_path), check=True).run(iter(docs[::-1]), rank=3))


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": 5}, r"tasks \(5\) is more than the corpus can be shared by: .* has 4 file\(s\)"),
    ({"tasks": 0}, r"tasks must be a positive integer, got 0"),
    ({"executor": "ray"}, r"executor 'ray' is unknown; allowed: local, slurm"),
    ({"executor": "slurm"}, r"the slurm executor needs SlurmOptions"),
    ({"slurm": SlurmOptions("cpu")}, r"the slurm executor needs SlurmOptions"),
    ({"num_workers": 0}, r"num_workers must be at least 1, got 0"),
    ({"minhash_buckets": 0, "near_duplicates": True}, r"minhash buckets and hashes per bucket"),
    ({"minhash_buckets": 20}, (r"minhash_buckets and minhash_hashes_per_bucket set the "
                               r"near-duplicate search: they need near_duplicates")),
    ({"executor": "slurm", "slurm": SlurmOptions("cpu"), "num_workers": 2},
     r"workers \(2\) are the tasks run at once by the local executor"),
    ({"val_fraction": 1.5}, r"val_fraction must be in \(0, 1\), got 1.5"),
])
def test_bad_input_is_refused_before_work_starts(corpus, tmp_path, kwargs, message):
    folder, _, _ = corpus
    with pytest.raises(ValueError, match=message):
        prepare(folder, out_dir=tmp_path / "out", vocab_size=VOCAB, **kwargs)
    assert not (tmp_path / "out").exists()


def test_folders_inside_the_corpus_and_empty_folders_are_refused(corpus, tmp_path):
    folder, _, _ = corpus
    with pytest.raises(ValueError, match=r"out_dir .* is inside the corpus folder"):
        prepare(folder, out_dir=folder / "prepared")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no .txt or .jsonl files"):
        prepare(tmp_path / "empty", out_dir=tmp_path / "out")


def test_a_missing_field_fails_before_any_stage(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:1 has no string field 'text'"):
        prepare(tmp_path / "c", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_single_file_is_one_task(tmp_path):
    (tmp_path / "c.txt").write_text("one\n\ntwo\n")
    with pytest.raises(ValueError, match=r"tasks \(2\) is more .* has 1 file\(s\) to read "
                                         r"\(one file\)"):
        prepare(tmp_path / "c.txt", out_dir=tmp_path / "out", tasks=2)


def test_an_empty_validation_split_is_named_before_any_stage(tmp_path):
    folder = tmp_path / "c"
    write_jsonl_folder(folder, [make_text(i, 100) for i in range(3)], 1)
    with pytest.raises(ValueError, match=r"too small for val_fraction 0.01: all of its 3 "
                                         r"document\(s\) with text fall on the training side"):
        prepare(folder, out_dir=tmp_path / "out", vocab_size=VOCAB, val_fraction=0.01,
                num_workers=1)
    assert not (tmp_path / "out").exists()


def test_the_command_line(corpus, tmp_path, capsys):
    folder, _, _ = corpus
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    out = tmp_path / "out"
    assert main(["prepare", str(folder), "--engine", "datatrove", "--tasks", "2",
                 "--num-workers", "1", "--tokenizer", str(tok_path), "--out-dir", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "manifest.json"))
    verify_prepared(out)
    for args, message in [
        (["--engine", "local"], ("--engine local was removed; datatrove prepares every text "
                                 "corpus, on this machine by default")),
        (["--slurm-partition", "cpu"], "--slurm-partition only apply with --executor slurm"),
        (["--executor", "slurm"], "--executor slurm needs --slurm-partition"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["prepare", str(folder), *args])


# --- Slurm ------------------------------------------------------------------------------------------
FAKE_SBATCH = """#!{python}
# sbatch that runs an array job at once, task by task: jobs are submitted first stage first,
# so running each on submission honours the dependencies.
import os, re, subprocess, sys
args, script = sys.argv[1:-1], sys.argv[-1]
text = open(script).read()
log = os.environ["FAKE_SLURM_LOG"]
job = sum(1 for _ in open(log)) + 100 if os.path.exists(log) else 100  # ids 100, 101, ...
with open(log, "a") as f:
    f.write(f"{job} | " + " ".join(args) + " | "
            + re.search(r"--job-name=(\\S+)", text).group(1)
            + ("_merge_stats" if "merge_stats " in text else "") + "\\n")
env = dict(os.environ, SLURM_NODELIST="localhost", SLURM_JOB_ID="1")
for arg in args:
    if arg.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in arg[len("--export=ALL,"):].split(","))
array = re.search(r"--array=0-(\\d+)", text)
for task in range(int(array.group(1)) + 1 if array else 1):
    subprocess.run(["bash", script], env=dict(env, SLURM_ARRAY_TASK_ID=str(task)), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job}")
"""
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == -* ]]; do [[ "$1" == -n ]] && shift; shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
echo localhost
"""


def test_the_slurm_executor_submits_a_chain_that_prepares(corpus, tmp_path, monkeypatch):
    """With sbatch, srun and scontrol stand-ins on PATH that run each array job as it is
    submitted: the sbatch scripts datatrove writes, with our options, build the same folder."""
    import sys

    folder, _, _ = corpus
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.replace("{python}", sys.executable)),
                       ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{Path.cwd()}:"
                               f"{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "submitted.txt"))
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    out = tmp_path / "out"
    slurm = SlurmOptions("cpu", time="1:00:00", cpus_per_task=1,
                         sbatch_args={"account": "lm", "qos": "high"},
                         env_command=f"export PATH={Path(sys.executable).parent}:$PATH")
    manifest = prepare(folder, out_dir=out, tokenizer=tok_path, tasks=2,
                                      executor="slurm", slurm=slurm)
    verify_prepared(manifest)
    # every stage's array job, each with datatrove's stats job after it, in stage order, each
    # stage depending on the one before
    submitted = [line.split(" | ") for line in
                 (tmp_path / "submitted.txt").read_text().splitlines()]
    stages = [(int(job), args, name) for job, args, name in submitted
              if not name.endswith("_merge_stats")]
    assert len(submitted) == 2 * len(stages)  # datatrove's stats job after each stage
    names = [name for _, _, name in stages]
    assert names == ["depthattn-prepare-signatures", "depthattn-prepare-duplicates",
                     "depthattn-prepare-shards", "depthattn-prepare-manifest"]
    assert "--dependency" not in stages[0][1]
    for (before, _, _), (_, args, _) in itertools.pairwise(stages):
        assert f"--dependency=afterok:{before}" in args
    assert json.loads((out / ".datatrove" / "slurm_jobs.json").read_text()) == \
        [str(job) for job, _, _ in stages]
    script = (out / ".datatrove" / "logs" / "shards" / "launch_script.slurm").read_text()
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=1:00:00", "#SBATCH --account=lm",
                 "#SBATCH --array=0-1", "#SBATCH --cpus-per-task=1", "#SBATCH --qos=high"):
        assert line in script
    assert "--qos=normal" not in script
    local = prepare(folder, out_dir=tmp_path / "here", tokenizer=tok_path,
                                   tasks=2, num_workers=1)
    assert [s["sha256"] for s in json.loads(manifest.read_text())["splits"]["train"]["shards"]] \
        == [s["sha256"] for s in json.loads(local.read_text())["splits"]["train"]["shards"]]


def test_a_datasets_folder_is_shared_by_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [make_text(i, 120) for i in range(25)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    tok_path = save_tokenizer(train_bpe([make_text(i, 200) for i in range(8)], VOCAB),
                              tmp_path / "tok")
    manifest = prepare(tmp_path / "ds", out_dir=tmp_path / "out",
                                      tokenizer=tok_path, tasks=3, num_workers=1, val_fraction=0.2)
    m = json.loads(manifest.read_text())
    listed = m["splits"]["train"]["documents"] + m["splits"]["validation"]["documents"]
    assert sorted(listed) == sorted(f"ds:{i}" for i in range(25))
    assert split_documents(manifest, "train") == \
        [clean_text(texts[int(n.split(":")[1])]) for n in m["splits"]["train"]["documents"]]
