"""benchmarks/gpu_check.sh on CPU: the dry run lists every step within the 8-minute budget, and a
run with a stand-in interpreter (each benchmark replaced by a fake that passes, fails or "times
out") records every step and summarises them without stopping at the first failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = {  # step name → what its command must contain
    "environment": ["-m benchmarks.gpu_summary environment"],
    "pytest_gpu": ["-m pytest -m gpu", "--junitxml="],
    "depth_mix_kernel": ["-m benchmarks.depth_mix_kernel --device cuda", "--backward",
                         "--impls unstacked triton"],
    "train_step_360m": ["-m benchmarks.train_step --presets 360m", "--dtype bfloat16",
                        "--compile"],
    "train_step_710m": ["-m benchmarks.train_step --presets 710m", "--dtype bfloat16",
                        "--compile"],
    "decode": ["-m benchmarks.decode --preset 360m", "--dtype bfloat16"],
    "vs_transformers": ["-m benchmarks.vs_transformers --preset 360m"],
    "summary": ["-m benchmarks.gpu_summary summarize"],
}
BUDGET_S = 8 * 60


def run_script(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_run_lists_every_step_within_the_budget(tmp_path):
    out = tmp_path / "out"
    done = run_script("--dry-run", OUT=str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]
    listed = {line.split()[0]: line for line in lines}
    assert list(listed) == list(STEPS)
    for name, parts in STEPS.items():
        for part in parts:
            assert part in listed[name], (name, part)
        assert str(out) in listed[name], name  # every step writes into $OUT
    assert sum(int(line.split()[1]) for line in lines) <= BUDGET_S
    assert not out.exists()  # nothing ran, nothing written


@pytest.mark.parametrize("args, message", [(["--bogus"], "unknown argument '--bogus'"),
                                           (["--dry-run", "x"], "too many arguments")])
def test_bad_arguments_are_refused_with_the_usage(args, message):
    done = run_script(*args)
    assert done.returncode == 2
    assert message in done.stderr and "usage: benchmarks/gpu_check.sh [--dry-run]" in done.stderr


FAKE_PYTHON = """\
#!{python}
# Stands in for the interpreter: the summary is real, every other step is faked.
import json, os, sys
args = sys.argv[1:]
module = args[1] if args[:1] == ["-m"] else ""
if module == "benchmarks.gpu_summary" and args[2] == "summarize":
    os.execv({python!r}, [{python!r}, *args])
if module == "benchmarks.gpu_summary":
    os.makedirs(args[3], exist_ok=True)
    open(os.path.join(args[3], "environment.json"), "w").write(json.dumps(dict(device="Fake H200")))
    sys.exit(0)
if module == "pytest":
    xml = next(a for a in args if a.startswith("--junitxml=")).split("=", 1)[1]
    open(xml, "w").write('<testsuites><testsuite><testcase classname="t" name="ok"/>'
                         '<testcase classname="t" name="bad"><failure/></testcase>'
                         '</testsuite></testsuites>')
    print("1 failed, 1 passed")
    sys.exit(1)
if module == "benchmarks.depth_mix_kernel":
    print("RuntimeError: the kernel crashed")
    sys.exit(3)
if module == "benchmarks.decode":
    sys.exit(124)  # what `timeout` returns
if "--presets" in args and "710m" in args:
    sys.exit(0)  # claims success but writes no JSON
path = args[args.index("--json") + 1]
rows = [dict(preset="360m", method="vanilla", time_ratio=1.0, mfu=0.41),
        dict(preset="360m", method="depth_attention", time_ratio=1.02, mfu=0.40)]
open(path, "w").write(json.dumps(dict(rows=rows, peak_flops_source="H200 datasheet")))
"""


def test_a_run_records_every_step_and_summarises_the_failures(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHON": str(fake), "OUT": str(out)})
    assert done.returncode == 1, done.stdout + done.stderr  # some steps failed
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"pytest_gpu": "failed (exit 1)", "depth_mix_kernel": "failed (exit 3)",
                      "train_step_360m": "ok",
                      "train_step_710m": "incomplete: wrote no train_step_710m.json",
                      "decode": "timed out after 30 s", "vs_transformers": "ok"}
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["pytest_gpu"]["result"]["failures"] == ["t::bad"]
    assert steps["depth_mix_kernel"]["log_tail"] == ["RuntimeError: the kernel crashed"]
    markdown = (out / "summary.md").read_text()
    assert "device Fake H200" in markdown and "2 of 6 steps ok" in markdown
    assert "| 360m | depth_attention | – | – | – | – | 1.02 | 40.0% | – | – |" in markdown
    assert "## train_step_710m: incomplete: wrote no train_step_710m.json" in markdown
    assert textwrap.dedent("""\
        ```
        RuntimeError: the kernel crashed
        ```""") in markdown


def test_a_kernel_row_that_failed_makes_its_step_incomplete(tmp_path):
    from benchmarks.gpu_summary import read_steps

    (tmp_path / "steps.tsv").write_text("depth_mix_kernel\t0\t1500\t35\tpython -m x --json k\n")
    rows = [{"impl": "reference", "status": "ok"}, {"impl": "triton", "status": "mismatch"}]
    (tmp_path / "depth_mix_kernel.json").write_text(json.dumps({"rows": rows}))
    (step,) = read_steps(tmp_path)
    assert step["status"] == "incomplete: 1 rows not ok (triton mismatch)"
