"""The paper's table (``depthattn compare --config paper_table``): every method on quality under
both protocols of ``experiments.tune`` and on cost, in ``OUT/paper_table.{md,json}`` and two
plots.

Quality: validation loss and perplexity (mean ± std over the reported seeds); Δ vs vanilla and
Δ vs Depth-Attention, paired by seed, each with p (paired t-test) raw and Holm-adjusted within
its family (per protocol: the other methods against vanilla; the methods other than vanilla
against Depth-Attention), and d_z; the zero-shot accuracies.

Cost, each as a ratio to vanilla, from one quiet pass after the training (``costs.json``,
measured once and reused): parameters and FLOPs added (the accounting), training tokens/s and
activation bytes saved for backward, decode tokens/s at batch 1 and 32, and the depth state:
in flight per token (measured from the tensors a method keeps, beside the accounting) and
persistent between decode steps, both ÷ the KV cache per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from depthattn.analysis.stats import fmt, holm
from depthattn.experiments.tables import paired
from depthattn.train.config import TrainConfig
from depthattn.utils.atomic import write_json_atomic, write_text_atomic

REFERENCES = ("vanilla", "depth_attention")  # the two columns of paired differences
PROTOCOLS = {"shared": "one shared recipe (the quickstart's)",
             "tuned": "each method at its own tuned learning rate"}


def quality(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method: loss, perplexity, zero-shot, and Δ vs each reference with raw and
    Holm-adjusted p (one family per reference)."""
    results = {row["method"]: row["runs"] for row in report["rows"]}
    rows = [{"method": row["method"], "val_loss": row["val_loss"], "val_ppl": row["val_ppl"],
             "zeroshot": {task: entry["acc"] for task, entry in row["zeroshot"].items()}}
            for row in report["rows"]]
    for reference in REFERENCES:
        if reference not in results:
            continue
        family = [r for r in rows if r["method"] != reference
                  and not (reference == "depth_attention" and r["method"] == "vanilla")]
        diffs = [paired(results, r["method"], reference) for r in family]
        for r, diff, adjusted in zip(family, diffs, holm([d["p_value"] for d in diffs])):
            r[f"vs_{reference}"] = {**diff, "p_holm": adjusted, "family_size": len(family)}
    return rows


def write_paper_table(result: dict[str, Any], base: TrainConfig, out_dir: Path,
                      name: str = "paper_table", costs: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """``result``: what ``run_tuned_compare`` returns. ``costs``: per method label, the cost
    columns (``depthattn.analysis`` measures them); measured here when not given."""
    methods = [row["method"] for row in result["shared"]["rows"]]
    if costs is None:
        from depthattn.experiments.table_costs import table_costs

        costs = table_costs(base, methods, out_dir / "costs.json")
    chosen = {m["method"]: m["chosen"] for m in result["tuning"]["methods"]}
    table = {"train_config": base.to_dict(), "tuning": result["tuning"],
             "protocols": {p: quality(result[p]) for p in PROTOCOLS}, "costs": costs,
             "chosen": chosen}
    table["plots"] = [str(p) for p in plot_table(table, out_dir, name)]
    write_json_atomic(out_dir / f"{name}.json", table)
    markdown = render(table)
    write_text_atomic(out_dir / f"{name}.md", markdown)
    print(markdown)
    return table


def _diff_cell(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "–"
    d = "–" if diff["effect_size"] is None else f"{diff['effect_size']:+.2f}"
    return (f"{diff['mean']:+.4f} ± {fmt(diff['std'])} (p {fmt(diff['p_value'], 3)}, Holm "
            f"{fmt(diff['p_holm'], 3)}, d_z {d})")


def render(table: dict[str, Any]) -> str:
    cfg, tuning = table["train_config"], table["tuning"]
    field = tuning["field"]
    lines = [f"# The paper's table: {len(table['costs'])} methods, quality and cost", "",
             f"Model preset `{cfg['model']}` {cfg['model_overrides'] or ''}, {cfg['steps']} steps "
             f"of {cfg['micro_batch_size']} x {cfg['seq_len']} tokens, data `{cfg['data']}`; "
             f"seeds {tuning['seeds']} reported, {field} tuned on seeds {tuning['tune_seeds']} "
             f"(never reported). Δ = method − reference, paired by seed (negative = lower loss); "
             f"p from a paired t-test, Holm-adjusted within each family (per protocol: every "
             f"method against vanilla; every method but vanilla against Depth-Attention).", ""]
    for protocol, title in PROTOCOLS.items():
        rows = table["protocols"][protocol]
        tasks = sorted({t for r in rows for t in r["zeroshot"]})
        lines += [f"## Quality, {title}", "",
                  f"| method | {field} | val loss | val ppl | Δ vs vanilla | Δ vs depth_attention"
                  + "".join(f" | {t}" for t in tasks) + " |",
                  "|---|---:|---|---:|---|---" + "|---" * len(tasks) + "|"]
        for r in rows:
            value = table["chosen"][r["method"]] if protocol == "tuned" else \
                tuning["shared_value"]
            loss, ppl = r["val_loss"], r["val_ppl"]
            zs = "".join(f" | {r['zeroshot'][t]['mean']:.4f} ± {r['zeroshot'][t]['std']:.4f}"
                         if t in r["zeroshot"] else " | –" for t in tasks)
            lines.append(f"| {r['method']} | {value} | {loss['mean']:.4f} ± {loss['std']:.4f} | "
                         f"{ppl['mean']:.2f} | {_diff_cell(r.get('vs_vanilla'))} | "
                         f"{_diff_cell(r.get('vs_depth_attention'))}{zs} |")
        lines.append("")
    lines += ["## Cost, as a ratio to vanilla", "",
              "| method | params added | FLOPs/token added | train tokens/s | activation bytes "
              "| decode tokens/s, batch 1 | batch 32 | in-flight state ÷ KV cache (measured; "
              "accounting) | persistent state ÷ KV cache |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, c in table["costs"].items():
        lines.append(f"| {method} | {c['added_params']:,} | {c['added_flops_fraction']:.4%} | "
                     f"{c['train_tokens_per_s_ratio']:.3f} | {c['activation_bytes_ratio']:.3f} | "
                     f"{c['decode_batch1_ratio']:.3f} | {c['decode_batch32_ratio']:.3f} | "
                     f"{c['inflight_vs_kv_measured']:.3f}; {c['inflight_vs_kv_accounting']:.3f} | "
                     f"{c['persistent_vs_kv_measured']:.3f} |")
    lines += ["", "Plots: " + ", ".join(Path(p).name for p in table["plots"]), ""]
    return "\n".join(lines)


def plot_table(table: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Δ validation loss vs vanilla (mean ± std of the paired differences, both protocols)
    against the in-flight depth state ÷ KV cache, and against training tokens/s."""
    from depthattn.analysis.plots import pyplot, save

    plt = pyplot()
    paths = []
    for key, xlabel, suffix in (
            ("inflight_vs_kv_measured", "in-flight depth state per token ÷ KV cache per token",
             "state"),
            ("train_tokens_per_s_ratio", "training tokens/s ÷ vanilla's", "speed")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for protocol, marker in (("shared", "o"), ("tuned", "s")):
            points = [(table["costs"][r["method"]][key], r["vs_vanilla"], r["method"])
                      for r in table["protocols"][protocol] if "vs_vanilla" in r]
            ax.errorbar([x for x, _, _ in points], [d["mean"] for _, d, _ in points],
                        yerr=[d["std"] for _, d, _ in points], fmt=marker, capsize=3,
                        label=PROTOCOLS[protocol])
            for x, d, method in points:
                ax.annotate(method, (x, d["mean"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Δ validation loss vs vanilla (paired by seed)")
        paths.append(save(fig, ax, out_dir / f"{name}_{suffix}.png",
                          f"{name}: quality against {suffix}"))
    return paths
