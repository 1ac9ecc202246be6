"""`depthattn analyze RUN`: depth maps of a trained run over its held-out text, at the final
model and at every checkpoint kept, written to RUN/analysis/:

    depth_weights.json              the final model's map (and one per checkpoint, by step)
    depth_map.png                   its heatmap (layers x sources, then self) and entropies
    depth_map_over_training.png     small multiples over the checkpoints, entropy against step
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from depthattn.analysis.depth_map_plots import plot_depth_map, plot_depth_map_evolution
from depthattn.analysis.depth_maps import DepthMap, depth_map
from depthattn.data.loader import ValidationBatches
from depthattn.data.shards import TokenStream
from depthattn.io import load_model
from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.checks import require_int
from depthattn.utils.devices import resolve_device

log = logging.getLogger(__name__)


def models_over_training(run: RunDir) -> list[tuple[int, Path]]:
    """(step, model folder) of every kept checkpoint and of the final model, by step."""
    found: dict[int, Path] = {}
    for folder in sorted(run.checkpoints_dir.glob("step_*")):
        state = folder / "state.json"
        if folder.is_dir() and state.is_file():
            found[json.loads(state.read_text())["step"]] = folder
    if (run.model_dir / "config.json").is_file():
        step = (json.loads(run.summary_file.read_text())["steps"] if run.is_finished()
                else max(found, default=0))
        found[step] = run.model_dir  # the final model stands for the last step
    return sorted(found.items())


def analyze_run(path: str | Path, windows: int = 64, out_dir: str | Path | None = None,
                device: str = "auto") -> dict[str, Any]:
    run = RunDir(path)
    if not run.is_run():
        raise FileNotFoundError(f"{run.path} is not a training run (no {run.config_file.name})")
    require_int("windows", windows, 1)
    models = models_over_training(run)
    if not models:
        raise FileNotFoundError(f"{run.path} holds neither a final model nor a checkpoint")
    config = run.read_config()
    stream = TokenStream(run.data_manifest(prepare=True), "validation")
    device = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else run.path / "analysis"
    out.mkdir(parents=True, exist_ok=True)

    maps: list[tuple[int, DepthMap]] = []
    for step, folder in models:
        model = load_model(folder, device=device)
        batches = ValidationBatches(stream, config["seq_len"], config["micro_batch_size"],
                                    max_windows=windows, max_seq_len=model.config.max_seq_len)
        maps.append((step, depth_map(model, batches, device)))
        log.info("%s step %d: depth map over %d tokens", run.path, step, maps[-1][1].tokens)
    final_step, final = maps[-1]
    report = {"run": str(run.path), "method": config["method"], "step": final_step,
              **final.to_dict(),
              "over_training": [{"step": s, **m.to_dict()} for s, m in maps]}
    write_json_atomic(out / "depth_weights.json", report)
    figures = [plot_depth_map(final, out / "depth_map.png",
                              title=f"{config['method']}, step {final_step}: mean depth weight")]
    if len(maps) > 1:
        figures.append(plot_depth_map_evolution([s for s, _ in maps], [m for _, m in maps],
                                                out / "depth_map_over_training.png"))
    report["figures"] = [str(f) for f in figures]
    return report
