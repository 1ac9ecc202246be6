"""`depthattn eval PATH... --loops 1,2,4,8,16`: validation perplexity of looped models at each
number of loop iterations r (test-time depth scaling), as a table, loops.json/.md and loops.png."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthattn.io import load_model
from depthattn.ops.kv_quant import check_kv_format
from depthattn.utils.atomic import (
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from depthattn.utils.checks import require_int
from depthattn.utils.devices import autocast_dtype, resolve_device
from depthattn.utils.errors import DepthAttnError


def parse_loops(text: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``: positive integers, no repeats."""
    values: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            value = 0
        if not item.isdigit() or value < 1:
            raise DepthAttnError(f"--loops: {item!r} is not a positive integer (give loop iteration "
                                 f"counts separated by commas, e.g. --loops 1,2,4,8)")
        if value in values:
            raise DepthAttnError(f"--loops: {value} is given twice")
        values.append(value)
    return values


def default_out_dir(first: str | Path) -> Path:
    """The first path's folder when it is a writable directory, else the working directory."""
    first = Path(first)
    folder = first if first.is_dir() else first.parent
    return folder if os.access(folder, os.W_OK) else Path.cwd()


def check_looped(paths: Sequence[str | Path]) -> None:
    """Every path holds a looped model (loop_layers > 0); checked before any evaluation."""
    for path in paths:
        config = load_model(path).config
        if not config.looped:
            raise DepthAttnError(f"{path}: --loops needs a looped model, and this one has "
                                 f"loop_layers={config.loop_layers}")


def evaluate_loops(paths: Sequence[str | Path], loops: Sequence[int],
                   out_dir: str | Path | None = None, data: str | None = None,
                   seq_len: int | None = None, windows: int = 0, batch_size: int = 8,
                   device: str = "auto", kv_cache: str | None = None,
                   prefill_chunk: int = 32) -> list[dict[str, Any]]:
    """One row per path and r: val loss, perplexity and tokens on the same validation batches
    with the looped block applied r times; writes loops.json, loops.md and loops.png."""
    from depthattn.eval.run import eval_data, evaluate_loaded, validation_batches

    if not paths:
        raise DepthAttnError("give at least one path")
    for r in loops:
        require_int("--loops value", r, 1)
    require_int("windows", windows, 0)
    require_int("batch_size", batch_size, 1)
    check_kv_format(kv_cache)
    require_int("prefill_chunk", prefill_chunk, 1)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths[0])
    check_looped(paths)
    rows: list[dict[str, Any]] = []
    dev = resolve_device(device)
    amp = autocast_dtype("auto", dev)
    for path in paths:
        path_data, used_seq_len = eval_data(path, data, seq_len)
        model = load_model(path, device=dev)
        batches = validation_batches(model, path_data, used_seq_len, windows, batch_size)
        trained = model.config.loop_iterations
        for r in loops:
            model.set_loop_iterations(r)
            result = evaluate_loaded(model, batches, dev, amp, kv_cache, prefill_chunk)
            rows.append({"path": str(path), "r": r, "trained_r": trained,
                         "val_loss": result.loss, "val_ppl": result.perplexity,
                         "val_tokens": result.tokens, "seq_len": used_seq_len,
                         "method": model.config.method, "kv_cache": kv_cache})
        model.set_loop_iterations(trained)
        del model
    table = markdown_table(rows)
    print(table, end="")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "loops.json", {"loops": list(loops), "windows": windows,
                                           "rows": rows})
    write_text_atomic(out / "loops.md", table)
    plot_loops(rows, out / "loops.png")
    print(f"written: {out / 'loops.json'}, {out / 'loops.md'}, {out / 'loops.png'}")
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | r | val loss | ppl | tokens |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        r = f"**{row['r']}** (trained)" if row["r"] == row["trained_r"] else str(row["r"])
        lines.append(f"| {row['path']} | {r} | {row['val_loss']:.4f} | {row['val_ppl']:.3f} | "
                     f"{row['val_tokens']:,} |")
    return "\n".join(lines) + "\n"


def plot_loops(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Perplexity against r (log2 x axis), one line per path; the trained r marked."""
    from depthattn.analysis.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    for name, group in by_path.items():
        group = sorted(group, key=lambda row: row["r"])
        line, = ax.plot([g["r"] for g in group], [g["val_ppl"] for g in group], marker="o",
                        label=f"{name} (trained r={group[0]['trained_r']})")
        own = [g for g in group if g["r"] == g["trained_r"]]
        if own:
            ax.scatter([own[0]["r"]], [own[0]["val_ppl"]], s=90, facecolors="none",
                       edgecolors=line.get_color(), zorder=3)
    ax.set_xscale("log", base=2)
    rs = sorted({row["r"] for row in rows})
    ax.set_xticks(rs)
    ax.set_xticklabels([str(r) for r in rs])
    ax.set_xlabel("loop iterations r")
    ax.set_ylabel("validation perplexity")
    if all(math.isfinite(row["val_ppl"]) and row["val_ppl"] > 0 for row in rows):
        ax.set_yscale("log")
    buffer = io.BytesIO()  # PNG (matplotlib's default format), then written atomically
    save(fig, ax, buffer, "test-time depth: perplexity against loop iterations")
    return write_bytes_atomic(path, buffer.getvalue())
