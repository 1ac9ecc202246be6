"""`depthattn report RUNS_DIR`: one report of a comparison (or a sweep) folder, as Markdown
(report.md, figures beside it) and self-contained HTML (report.html, figures embedded):

1. the comparison: mean ± std per method, paired tests and effect sizes with intervals, curves;
2. the sweep, when RUNS_DIR holds sweep.json;
3. depth maps of each Depth-Attention method (its first seed), over training;
4. KV-cache quantization: validation loss through a cache stored in each format, against the
   unquantized cache, for every method (first seed);
5. batching invariance of the same models in float32 and bfloat16.

Sections 3–5 load the trained models; their results are cached in each run's analysis/.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from depthattn.analysis.analyze_run import analyze_run
from depthattn.analysis.invariance import invariance_markdown, invariance_table
from depthattn.analysis.plots import pyplot, write
from depthattn.data.loader import ValidationBatches
from depthattn.data.shards import TokenStream
from depthattn.eval.perplexity import evaluate_perplexity_cached
from depthattn.experiments.sweep import render_sweep
from depthattn.experiments.tables import render_markdown
from depthattn.io import load_model
from depthattn.ops.kv_quant import KV_FORMATS
from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.checks import require_int

log = logging.getLogger(__name__)
SECTIONS = ("Comparison", "Sweep", "Depth maps", "KV-cache quantization", "Batching invariance")


def find_comparison(runs_dir: Path) -> tuple[dict[str, Any], Path, dict[str, Any] | None]:
    """(compare.json, its folder, sweep.json or None); in a sweep, the last value's comparison
    stands for the model sections."""
    sweep_file = runs_dir / "sweep.json"
    if sweep_file.is_file():
        sweep = json.loads(sweep_file.read_text())
        folder = runs_dir / f"{sweep['field']}={sweep['values'][-1]}"
        return json.loads((folder / "compare.json").read_text()), folder, sweep
    if not (runs_dir / "compare.json").is_file():
        raise FileNotFoundError(f"{runs_dir} holds neither compare.json nor sweep.json: run "
                                f"`depthattn compare` (or quickstart) with --out {runs_dir}")
    return json.loads((runs_dir / "compare.json").read_text()), runs_dir, None


def first_runs(compare: dict[str, Any], compare_dir: Path) -> dict[str, Path]:
    """method label → the run directory of its first seed. compare.json records run
    directories as given (maybe relative to where compare ran); a comparison keeps them at
    COMPARE_DIR/LABEL/seedN, which is where they are looked for when the recorded path is not
    there (the folder was moved, or the report runs from another directory)."""
    runs = {}
    for row in compare["rows"]:
        recorded = Path(row["runs"][0]["run_dir"])
        runs[row["method"]] = (recorded if (recorded / "train_config.json").is_file()
                               else compare_dir / recorded.parent.name / recorded.name)
    return runs


def kv_cache_rows(runs: dict[str, Path], models: dict[str, torch.nn.Module], windows: int,
                  formats: tuple[str, ...] = KV_FORMATS) -> list[dict[str, Any]]:
    """Validation loss through a cache in each format, Δ against the unquantized cache;
    ``models``: each run's loaded model."""
    rows = []
    for label, path in runs.items():
        run = RunDir(path)
        cached = run.path / "analysis" / "kv_cache.json"
        if cached.is_file():
            saved = json.loads(cached.read_text())
            if saved["windows"] == windows and set(saved["formats"]) >= set(formats):
                rows += [{"method": label, **r} for r in saved["rows"]]
                continue
        config = run.read_config()
        model = models[label]
        stream = TokenStream(run.data_manifest(prepare=True), "validation")
        batches = list(ValidationBatches(stream, config["seq_len"], config["micro_batch_size"],
                                         max_windows=windows,
                                         max_seq_len=model.config.max_seq_len))
        reference = evaluate_perplexity_cached(model, batches, None).loss
        results = []
        for kv_format in formats:
            loss = evaluate_perplexity_cached(model, batches, kv_format).loss
            results.append({"format": kv_format, "val_loss": loss, "delta": loss - reference,
                            "reference": reference})
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cached, {"windows": windows, "formats": list(formats), "rows": results})
        rows += [{"method": label, **r} for r in results]
    return rows


def kv_cache_markdown(rows: list[dict[str, Any]]) -> list[str]:
    formats = list(dict.fromkeys(r["format"] for r in rows))
    lines = ["| method | unquantized | " + " | ".join(f"{f} (Δ)" for f in formats) + " |",
             "|---|---:|" + "---:|" * len(formats)]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = {r["format"]: r for r in rows if r["method"] == method}
        reference = next(iter(mine.values()))["reference"]
        lines.append(f"| {method} | {reference:.4f} | " + " | ".join(
            f"{mine[f]['val_loss']:.4f} ({mine[f]['delta']:+.2e})" for f in formats) + " |")
    return lines


def plot_kv_cache(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    formats = list(dict.fromkeys(r["format"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for i, method in enumerate(methods):
        deltas = [next(r["delta"] for r in rows if r["method"] == method and r["format"] == f)
                  for f in formats]
        ax.bar([x + i * width for x in range(len(formats))], deltas, width, label=method)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(formats))])
    ax.set_xticklabels(formats)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("Δ validation loss vs unquantized cache")
    ax.set_title("KV-cache storage format: loss through the cache")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return write(fig, path)


def _figure(path: Path, out_dir: Path) -> str:
    return f"![{path.stem}]({path.relative_to(out_dir) if path.is_relative_to(out_dir) else path})"


def build_report(runs_dir: str | Path, windows: int = 16) -> tuple[Path, Path]:
    """Write runs_dir/report.md and runs_dir/report.html; return their paths."""
    runs_dir = Path(runs_dir)
    require_int("windows", windows, 1)
    compare, compare_dir, sweep = find_comparison(runs_dir)
    runs = first_runs(compare, compare_dir)
    figures_dir = runs_dir / "report_figures"
    figures_dir.mkdir(parents=True, exist_ok=True)

    md = [f"# Report: {runs_dir}", "", "## Comparison", ""]
    body = render_markdown(compare).split("\n", 2)[2]  # without its own title
    md += [re.sub(r"\nPlots: .*\n?$", "", body.rstrip()), ""]
    md += [_figure(compare_dir / Path(p).name, runs_dir) for p in compare["plots"]] + [""]

    md += ["## Sweep", ""]
    if sweep is None:
        md += ["No sweep in this folder (`depthattn compare --sweep FIELD=V1,V2,...`).", ""]
    else:
        md += [render_sweep(sweep).split("\n", 2)[2].rsplit("\nPlot:", 1)[0], "",
               _figure(runs_dir / Path(sweep["plot"]).name, runs_dir), ""]

    md += ["## Depth maps", ""]
    depth_methods = [label for label, path in runs.items()
                     if "depth_attention" in RunDir(path).read_config()["method"]]
    seeds = {row["method"]: row["seeds"][0] for row in compare["rows"]}
    for label in depth_methods:
        analysis = analyze_run(runs[label], windows=windows)
        md += [f"**{label}** (seed {seeds[label]}, {analysis['tokens']:,} "
               f"validation tokens): entropy per layer " + ", ".join(
                   f"L{l} {e:.2f}/{m:.2f}" for l, (e, m) in
                   enumerate(zip(analysis["entropy"], analysis["max_entropy"])) if e is not None)
               + " nats (uniform = the second number).", ""]
        md += [_figure(Path(f), runs_dir) for f in analysis["figures"]] + [""]
    if not depth_methods:
        md += ["No method of this comparison runs Depth-Attention.", ""]

    md += ["## KV-cache quantization", "",
           f"Validation loss over {windows} windows computed through a KV cache stored in each "
           f"format (prefilled 32 tokens at a time), against the same windows through an "
           f"unquantized cache.", ""]
    models = {label: load_model(path) for label, path in runs.items()}  # loaded once, used twice
    kv_rows = kv_cache_rows(runs, models, windows)
    md += kv_cache_markdown(kv_rows) + ["", _figure(plot_kv_cache(kv_rows, figures_dir /
                                                                  "kv_cache.png"), runs_dir), ""]

    md += ["## Batching invariance", "",
           "Max |Δ logit| of one validation-length random sequence against the same sequence "
           "alone: left-padded in a batch, prefilled in chunks of 5, decoded token by token.", ""]
    seq_len = min(RunDir(p).read_config()["seq_len"] for p in runs.values())
    invariance = invariance_table(models, length=min(seq_len, 64))
    md += invariance_markdown(invariance) + [""]

    markdown_text = "\n".join(md)
    md_path = write_text_atomic(runs_dir / "report.md", markdown_text)
    html_path = write_text_atomic(runs_dir / "report.html", to_html(markdown_text, runs_dir))
    write_json_atomic(runs_dir / "report.json", {"kv_cache": kv_rows, "invariance": invariance,
                                                 "depth_methods": depth_methods})
    return md_path, html_path


def to_html(markdown_text: str, base: Path) -> str:
    """Self-contained HTML: Markdown rendered with python-markdown, images inlined as data URIs."""
    import markdown

    def inline(match: re.Match) -> str:
        path = Path(match.group(2))
        path = path if path.is_absolute() else base / path
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    embedded = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, markdown_text)
    body = markdown.markdown(embedded, extensions=["tables"])
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>depthattn report</title>" \
           f"<style>{style}</style></head><body>{body}</body></html>\n"


__all__ = ["SECTIONS", "build_report", "kv_cache_rows", "to_html"]
