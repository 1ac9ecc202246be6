"""The KV cache per token of MHA, GQA and MLA models, and each cross-layer method's depth state as
a ratio to it, at the quickstart shape and at a DeepSeek-V2-Lite-like shape (docs/results.md,
"MLA: cache and in-flight state").

    python -m benchmarks.cache_state_table                    # markdown to stdout
    python -m benchmarks.cache_state_table --out cache_state.md
    python -m benchmarks.cache_state_table --no-measure       # closed forms only

Numbers are elements per token, whatever the dtype. The KV cache is the vanilla decoder's:
2·H_kv·d per token and layer with MHA and GQA, d_c + d_rope with MLA (``ModelConfig.kv_cache_width``),
times L layers. A method's *in-flight* state is the depth state alive while one token traverses
the stack (vanilla: its residual, d), its *persistent* state what it keeps across decoding steps
beyond that cache; both are ``MethodCost``'s closed forms (``depthattn.analysis.cost``) and are
shown ÷ the KV cache per token. On MLA, ``depth_attention`` runs the ``latent`` rule (its default)
and ``value_residual`` is the latent residual (docs/method.md §9); muddformer refuses MLA.

Correctness first: at the quickstart shape every model is built (random weights, CPU, fp32) and
measured by ``depthattn.analysis.measured_state``; the script stops unless the in-flight state
measured between sublayers equals the accounting (it is printed beside it) and what a decoding
loop carries from step to step grows by the KV cache plus the persistent state (and the cache's
padding record, one byte per token). The DeepSeek-V2-Lite-like shape (dense MLPs in every layer,
no MoE) is closed form only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from depthattn import CausalLM, ModelConfig
from depthattn.analysis.cost import CostReport, cost_report
from depthattn.analysis.measured_state import measure_inflight_state, measure_persistent_state
from depthattn.model.config import PRESETS
from depthattn.utils.errors import DepthAttnError

KINDS = ("MHA", "GQA", "MLA")
# The quickstart's model (src/depthattn/configs/quickstart.toml: the tiny preset with these
# overrides); its GQA cache is H_kv = 2, and the mla-quickstart preset is its MLA twin.
QUICKSTART = dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_layers=8,
                  num_heads=4, max_seq_len=1024)
# DeepSeek-V2-Lite's attention and widths with a dense MLP in every layer (its intermediate_size;
# the real model's MoE layers do not change the cache or the depth state).
V2_LITE = dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_layers=27,
               num_heads=16, max_seq_len=4096)
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "Quickstart": {
        "MHA": dict(QUICKSTART, num_kv_heads=4, head_dim=32),
        "GQA": dict(QUICKSTART, num_kv_heads=2, head_dim=32),
        "MLA": dict(PRESETS["mla-quickstart"]),  # d_c 64, d_nope 32, d_rope 16, d_v 32
    },
    "DeepSeek-V2-Lite-like": {
        "MHA": dict(V2_LITE, num_kv_heads=16, head_dim=128),
        "GQA": dict(V2_LITE, num_kv_heads=4, head_dim=128),
        "MLA": dict(V2_LITE, attention="mla", num_kv_heads=16, kv_lora_rank=512,
                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
    },
}
MEASURED_SHAPES = ("Quickstart",)


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    options: dict[str, Any]
    kinds: tuple[str, ...] = KINDS  # the cache kinds it applies to ("—" elsewhere)


ROWS = [
    Row("vanilla", "vanilla", {}),
    Row("value_residual (MLA: latent residual)", "value_residual", {}),
    Row("depth_attention (MLA: latent rule)", "depth_attention", {}),
    Row("depth_attention, MLA values rule", "depth_attention", {"mla_mix": "values"}, ("MLA",)),
    Row("denseformer", "denseformer", {}),
    Row("hyper_connections", "hyper_connections", {}),
    Row("mhc", "mhc", {}),
    Row("attnres", "attnres", {}),
    Row("block_attnres", "block_attnres", {}),
    Row("muddformer", "muddformer", {}),
]


@dataclass(frozen=True)
class Cell:
    """One method on one cache kind: its report, the measured in-flight state (or None), or
    why it does not run there."""

    report: CostReport | None = None
    measured: int | None = None
    missing: str = "—"  # "—": not this kind's variant; "n/a": the method refuses the geometry


def config_of(shape: str, kind: str, row: Row) -> ModelConfig:
    return ModelConfig(**SHAPES[shape][kind], method=row.method, method_options=row.options)


def cell(shape: str, kind: str, row: Row, measure: bool) -> Cell:
    if kind not in row.kinds:
        return Cell()
    try:
        config = config_of(shape, kind, row)
        report = cost_report(config, dtype="fp32")
    except DepthAttnError:  # muddformer on MLA
        return Cell(missing="n/a")
    if not measure:
        return Cell(report)
    torch.manual_seed(0)
    return Cell(report, check_against_measurement(CausalLM(config).eval(), report))


def check_against_measurement(model: CausalLM, report: CostReport) -> int:
    """The measured in-flight state, after checking it and the persistent state against the
    accounting (``depthattn.analysis.measured_state``)."""
    inflight = measure_inflight_state(model)
    label = f"{model.config.attention} / {model.config.method} {model.config.method_options}"
    if inflight.per_token != report.added.inflight_state_per_token:
        raise SystemExit(f"{label}: in-flight state measured {inflight.per_token} elements per "
                         f"token, accounted {report.added.inflight_state_per_token} "
                         f"(at {inflight.widest}: {dict(inflight.parts)})")
    persistent = measure_persistent_state(model)
    expected = report.bytes_per_element * (report.backbone.kv_cache_per_token
                                           + report.added.persistent_state_per_token)
    if persistent.kv_bytes_per_token != expected or persistent.beyond_kv_bytes_per_token != 1:
        raise SystemExit(f"{label}: a decoding step carries {persistent.bytes_per_token} bytes "
                         f"per token ({dict(persistent.parts)}); the accounting says {expected} "
                         f"(KV cache and persistent state) + 1 (the padding record)")
    return inflight.per_token


def cache_geometry(config: ModelConfig) -> str:
    if config.attention == "mla":
        return f"d_c + d_rope = {config.kv_lora_rank} + {config.qk_rope_head_dim}"
    return f"2·H_kv·d = 2·{config.num_kv_heads}·{config.head_dim}"


def ratio(n: int, kv: int) -> str:
    return f"{n:,} ({n / kv:.3g}×)"


def markdown(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A markdown table; ``align``: one letter per column, l or r."""
    rule = ["---" if a == "l" else "--:" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in (header, rule, *rows)]


def shape_table(shape: str, measure: bool) -> str:
    """The cache table and the depth-state table of one shape, in markdown."""
    vanilla = {kind: config_of(shape, kind, ROWS[0]) for kind in KINDS}
    first = vanilla["MHA"]
    L = first.num_layers
    title = (f"### {shape} shape: D = {first.hidden_size}, L = {L}, H = {first.num_heads}, "
             f"vocabulary {first.vocab_size:,}, MLP {first.intermediate_size:,}")
    lines = [title, ""]
    cache_rows = []
    for kind, config in vanilla.items():
        width = config.kv_cache_width
        cache_rows.append([kind, cache_geometry(config), f"{width:,}", f"{L * width:,}",
                           f"{2 * L * width:,}"])
    lines += markdown(["cache", "per token and layer", "elements", f"per token (L = {L})",
                       "bytes per token (bf16)"], cache_rows, "llrrr")
    cells = {}
    for row in ROWS:
        for kind in KINDS:
            cells[row.label, kind] = cell(shape, kind, row, measure)
    header, align = ["method"], "l"
    for kind in KINDS:
        header.append(f"{kind} in flight (÷ KV)")
        align += "r"
        if measure:
            header.append("measured")
            align += "r"
    header.append("persistent beyond KV (÷ KV): " + " / ".join(KINDS))
    align += "r"
    body = []
    for row in ROWS:
        line, persistent = [row.label], []
        for kind in KINDS:
            c = cells[row.label, kind]
            if c.report is None:
                line += [c.missing] * (2 if measure else 1)
                persistent.append(c.missing)
                continue
            kv = c.report.backbone.kv_cache_per_token
            line.append(ratio(c.report.added.inflight_state_per_token, kv))
            if measure:
                line.append(f"{c.measured:,}")
            extra = c.report.added.persistent_state_per_token
            persistent.append(ratio(extra, kv) if extra else "0")
        body.append(line + [" / ".join(persistent)])
    note = "; measured: the in-flight state read off a built model" if measure else ""
    caption = (f"Depth state per token, elements (÷ the KV cache per token of that kind); every "
               f"method with its default options (Depth-Attention's stride L // 2 = {L // 2})"
               f"{note}:")
    lines += ["", caption, ""]
    lines += markdown(header, body, align)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    parser.add_argument("--no-measure", action="store_true",
                        help="closed forms only: build and measure no model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: more threads only add synchronisation
    measure = not args.no_measure
    tables = [shape_table(shape, measure and shape in MEASURED_SHAPES) for shape in SHAPES]
    text = "\n\n".join(tables) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
