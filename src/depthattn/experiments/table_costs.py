"""The cost columns of the paper table, each against vanilla: the accounting (parameters and
FLOPs added, in-flight state), the measured state (in flight, from the tensors a method keeps;
persistent, between decode steps) and one quiet speed pass (``analysis.speed.measure_speeds``:
methods interleaved, median of the rounds). Measured once per geometry and method list, kept in
``costs.json`` beside the table and reused, so that speeds are never timed beside training."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from depthattn.analysis.cost import cost_report
from depthattn.analysis.measured_state import measure_inflight_state, measure_persistent_state
from depthattn.analysis.speed import measure_speeds
from depthattn.experiments.compare import parse_method
from depthattn.methods import resolve_config
from depthattn.model.decoder import CausalLM
from depthattn.train.config import TrainConfig
from depthattn.utils.atomic import write_json_atomic

log = logging.getLogger(__name__)
ROUNDS = 3
DECODE_BATCHES = (1, 32)
NEW_TOKENS = 32  # timed decode steps per round


def table_costs(base: TrainConfig, methods: list[str], path: Path,
                rounds: int = ROUNDS) -> dict[str, dict[str, Any]]:
    """label → cost columns (``paper_table.render`` names them) for ``base``'s geometry."""
    geometry = base.model_config()
    settings = {"model": geometry.to_dict(), "methods": methods, "rounds": rounds,
                "batch_size": base.micro_batch_size, "seq_len": base.seq_len,
                "decode_batches": list(DECODE_BATCHES), "new_tokens": NEW_TOKENS}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            return saved["costs"]
    configs = {}
    for text in methods:
        run = parse_method(text)
        configs[text] = resolve_config(geometry.with_method(run.method, **run.options))
    log.info("measuring cost: %d methods, %d rounds (a quiet pass: nothing else should run)",
             len(configs), rounds)
    speeds = measure_speeds(geometry, configs, rounds=rounds, batch_size=base.micro_batch_size,
                            seq_len=base.seq_len, decode_batches=DECODE_BATCHES,
                            context=base.seq_len, new_tokens=NEW_TOKENS, device="cpu")
    costs = {}
    for label, config in configs.items():
        report = cost_report(config, seq_len=base.seq_len, dtype="fp32")
        torch.manual_seed(0)
        model = CausalLM(config).eval()
        kv = report.backbone.kv_cache_per_token
        speed = speeds[label]
        costs[label] = {
            "added_params": report.added.added_params,
            "added_flops_per_token": report.added.added_flops_per_token,
            "added_flops_fraction": report.added_flops_fraction,
            "train_tokens_per_s_ratio": speed.train_ratio,
            "activation_bytes_ratio": speed.activation_ratio,
            "decode_batch1_ratio": speed.decode_ratio[1],
            "decode_batch32_ratio": speed.decode_ratio[32],
            "inflight_vs_kv_accounting": report.inflight_vs_kv_cache,
            "inflight_vs_kv_measured": measure_inflight_state(model).per_token / kv,
            "persistent_vs_kv_measured": measure_persistent_state(model).vs_kv_cache(
                report.kv_cache_bytes_per_token),
            "train_tokens_per_s": speed.train_tokens_per_s,
            "decode_tokens_per_s": {str(b): v for b, v in speed.decode_tokens_per_s.items()}}
    write_json_atomic(path, {"settings": settings, "costs": costs,
                             "device": "cpu", "torch": torch.__version__})
    return costs
