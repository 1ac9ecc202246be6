"""The two ends of ``benchmarks/gpu_check.sh``: what the machine is, and one summary of every step.

    python -m benchmarks.gpu_summary environment OUT_DIR   # print device and versions, save them
    python -m benchmarks.gpu_summary summarize OUT_DIR     # OUT_DIR/summary.md and summary.json

``summarize`` reads what the script leaves in OUT_DIR: ``steps.tsv`` (one line per step: name,
exit status, milliseconds, time limit in seconds, command), each step's ``NAME.log`` and, where
the step writes one, ``NAME.json`` (the benchmark's rows) or ``NAME.xml`` (pytest's JUnit report).
A failed or timed-out step keeps its place in the summary, with the end of its log; a step that
exits 0 without the JSON file it was asked for, or with rows whose status is not ok (the
kernel benchmark's failed or mismatched implementations), is "incomplete", not ok.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree

TIMED_OUT = {124, 137}  # `timeout`'s status, and SIGKILL after its --kill-after
LOG_TAIL = 15  # lines of a failed step's log in the summary
# Columns shown per benchmark (a step named train_step_360m uses train_step's); "%" = a fraction
COLUMNS = {
    "depth_mix_kernel": ["impl", "sources", "pass", "status", "ms", "gb_per_s", "peak_fraction%",
                         "time_ratio", "max_rel_err", "reason"],
    "train_step": ["preset", "method", "seq", "batch", "step_ms", "tokens_per_s", "time_ratio",
                   "mfu%", "memory_bytes", "memory_ratio"],
    "decode": ["mode", "method", "batch", "step_ms", "tokens_per_s", "speed_ratio",
               "cache_bytes"],
    "vs_transformers": ["kind", "name", "batch", "ms", "tokens_per_s", "ratio", "peak_mib"],
}
# Figures of merit a benchmark reports beside its rows
HEADLINE = {"depth_mix_kernel": ["shape", "peak_bandwidth", "peak_bandwidth_source"],
            "train_step": ["compile", "optimizer", "peak_flops", "peak_flops_source"]}


def environment(out_dir: Path) -> int:
    """Print and save the device and the versions; 1 (and why) without a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch "
              f"{torch.__version__} (benchmarks/gpu_check.sh --dry-run lists the commands)",
              file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    env = {"device": torch.cuda.get_device_name(0), "devices": torch.cuda.device_count(),
           "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
           "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
           "cuda": torch.version.cuda, "driver": _driver(), "python": platform.python_version()}
    for package in ("triton", "transformers", "depthattn"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "not installed"
    for key, value in env.items():
        print(f"{key:>12}: {value}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    return 0


def _driver() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=20,
                              check=True).stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        return f"unknown ({type(error).__name__})"


def read_steps(out_dir: Path) -> list[dict]:
    """The steps of ``steps.tsv`` with their status, results and, if they failed, log tails."""
    table = out_dir / "steps.tsv"
    if not table.exists():
        raise SystemExit(f"gpu_summary: {table} does not exist: no step has run")
    steps = []
    for number, line in enumerate(table.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise SystemExit(f"gpu_summary: {table}:{number} has {len(fields)} fields, not 5")
        name, rc, ms, limit, command = fields
        rc = int(rc)
        status = "ok" if rc == 0 else (f"timed out after {limit} s" if rc in TIMED_OUT
                                       else f"failed (exit {rc})")
        step = {"name": name, "status": status, "exit": rc, "seconds": int(ms) / 1e3,
                "limit_s": int(limit), "command": command, "result": None}
        _read_outputs(step, out_dir)
        steps.append(step)
    return steps


def _read_outputs(step: dict, out_dir: Path) -> None:
    """Attach the step's result (JUnit counts or the benchmark's JSON) and, unless it is ok,
    the end of its log."""
    name, rc = step["name"], step["exit"]
    json_path, xml_path = out_dir / f"{name}.json", out_dir / f"{name}.xml"
    if xml_path.exists():
        step["result"] = junit_counts(xml_path)
    elif json_path.exists():
        step["result"] = json.loads(json_path.read_text())
        # depth_mix_kernel marks an implementation that failed or mismatched in its rows
        bad = [r for r in step["result"].get("rows", []) if r.get("status", "ok") != "ok"]
        if bad and rc == 0:
            step["status"] = (f"incomplete: {len(bad)} rows not ok ("
                              + ", ".join(sorted({f"{r.get('impl')} {r['status']}"
                                                  for r in bad})) + ")")
    elif "--json" in step["command"] and rc == 0:
        step["status"] = f"incomplete: wrote no {json_path.name}"
    if step["status"] != "ok":
        log = out_dir / f"{name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        step["log_tail"] = lines[-LOG_TAIL:] or [f"({log.name} is empty or missing)"]


def junit_counts(path: Path) -> dict:
    """Passed, failed, errors, skipped and the failing tests' ids of a pytest JUnit report."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in (case for suite in suites for case in suite.iter("testcase")):
        outcome = next((child.tag for child in case
                        if child.tag in ("failure", "error", "skipped")), "passed")
        key = {"failure": "failed", "error": "errors"}.get(outcome, outcome)
        counts[key] += 1
        if key in ("failed", "errors"):
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    return counts


def _cell(row: dict, column: str) -> str:
    percent = column.endswith("%")
    value = row.get(column.rstrip("%"))
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "/")


def markdown(env: dict | None, steps: list[dict]) -> str:
    lines = ["# GPU check", ""]
    if env:
        lines += [", ".join(f"{k} {v}" for k, v in env.items()), ""]
    total = sum(step["seconds"] for step in steps)
    ok = sum(s["status"] == "ok" for s in steps)
    lines += [f"{ok} of {len(steps)} steps ok, {total:.0f} s in all.", "",
              "| step | status | seconds | limit | command |", "|---|---|---:|---:|---|"]
    for s in steps:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['limit_s']} | "
                     f"`{s['command']}` |")
    for s in steps:
        lines += ["", f"## {s['name']}: {s['status']}"]
        result = s["result"]
        if isinstance(result, dict) and "passed" in result:
            lines += ["", ", ".join(f"{result[k]} {k}" for k in
                                    ("passed", "failed", "errors", "skipped"))]
            lines += [f"- failed: `{name}`" for name in result["failures"]]
        elif isinstance(result, dict):
            kind = next((k for k in COLUMNS if s["name"].startswith(k)), None)
            headline = [f"- {key}: {_cell(result, key)}" for key in HEADLINE.get(kind, [])
                        if key in result]
            rows = result.get("rows", [])
            columns = COLUMNS.get(kind) or sorted({k for r in rows for k in r})
            lines += [""] + headline if headline else []
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
        if s.get("log_tail"):
            lines += ["", "```", *s["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def summarize(out_dir: Path) -> int:
    """Write summary.md and summary.json; 0 when every step passed, 1 otherwise."""
    steps = read_steps(out_dir)
    env_file = out_dir / "environment.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else None
    text = markdown(env, steps)
    (out_dir / "summary.md").write_text(text)
    (out_dir / "summary.json").write_text(
        json.dumps({"environment": env, "steps": steps}, indent=2) + "\n")
    print(text)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["environment", "summarize"])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    return environment(args.out_dir) if args.action == "environment" else summarize(args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
