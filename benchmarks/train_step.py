"""Training-step time, memory and MFU per method × preset × sequence length, with ratios to
vanilla measured in the same run.

    python -m benchmarks.train_step                              # tiny preset, seq 256, CPU fp32
    python -m benchmarks.train_step --threads 1                  # steadier on a busy CPU
    python -m benchmarks.train_step --presets 360m 710m --seq 2048 --dtype bfloat16 --compile \
        --batch auto --optimizer --json train_step.json          # one GPU, filled

A step is forward + next-token cross-entropy + backward (+ AdamW with --optimizer). Each
(preset, seq) builds one model per method, all from the same seed, and times them interleaved
(one step of each method per round, the first round untimed), keeping the median per method.

Memory: on CUDA the peak allocated memory of one step (``torch.cuda.max_memory_allocated``,
weights, gradients and optimizer state included); on CPU the bytes autograd saves for backward
(unique storages seen by a saved-tensors hook, as ``methods.py`` measures them, but without the
parameters themselves), always of the eager model. Under --activation-checkpointing that CPU
figure omits the block inputs the checkpoints hold.

MFU = model FLOPs per token × tokens/s ÷ peak FLOP/s, where model FLOPs per token are 3 × the
forward count of ``depthattn.analysis.cost`` (matmuls, causal attention at this seq length, and
the method's own FLOPs) — activation checkpointing's recomputation is not counted. The peak is
the datasheet's dense rate for the compute dtype on a known GPU, otherwise a matmul measured now
(see ``device_peaks.py``).

--batch auto (CUDA only) doubles the batch, from 1, while a step of every method still fits, and
keeps the last that did: all methods of a (preset, seq) run at the same batch.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.device_peaks import device_name, peak_flops, synchronize
from depthattn import CausalLM, ModelConfig
from depthattn.analysis.cost import cost_report

BASELINE = "vanilla"
MAX_AUTO_BATCH = 1024


class Runner:
    """One method's model, its optimizer and its step on fixed token ids."""

    def __init__(self, config: ModelConfig, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)  # same weights for the parameters every method shares
        self.config = config
        self.device = device
        self.model = CausalLM(config).to(device).train()
        self.model.model.activation_checkpointing = args.activation_checkpointing
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.optimizer = (torch.optim.AdamW(self.model.parameters(), lr=1e-4)
                          if args.optimizer else None)
        self.autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
        self.ids: torch.Tensor | None = None

    def set_batch(self, batch: int, seq: int) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, self.config.vocab_size, (batch, seq + 1),
                                 generator=gen).to(self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, forward) -> torch.Tensor:
        with self._autocast():
            logits = forward(self.ids[:, :-1])  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), self.ids[:, 1:].flatten())

    def step(self) -> float:
        loss = self.loss(self.forward)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        return loss.item()  # also waits for the device

    def saved_bytes(self) -> int:
        """Bytes autograd saves for backward in one eager step, parameters excluded."""
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss(self.model)
        loss.backward()
        self.model.zero_grad(set_to_none=True)
        return sum(storages.values())

    def peak_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        return torch.cuda.max_memory_allocated(self.device)


def free_after_oom(runners: list[Runner]) -> None:
    for runner in runners:
        runner.model.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()


def auto_batch(runners: list[Runner], seq: int) -> int:
    """The largest power of two (≤ MAX_AUTO_BATCH) at which a step of every method fits."""
    fits = 0
    batch = 1
    while batch <= MAX_AUTO_BATCH:
        try:
            for runner in runners:
                runner.set_batch(batch, seq)
                runner.step()
        except torch.cuda.OutOfMemoryError:
            break  # free only after the except block: its traceback holds the failed step's tensors
        fits, batch = batch, batch * 2
    free_after_oom(runners)
    if not fits:
        raise SystemExit(f"--batch auto: even batch 1 at seq {seq} does not fit")
    return fits


def measure(preset: str, seq: int, args: argparse.Namespace, device: torch.device,
            methods: list[str]) -> list[dict]:
    config = ModelConfig.from_preset(preset)
    if seq > config.max_seq_len:
        raise SystemExit(f"--seq ({seq}) exceeds preset {preset}'s max_seq_len "
                         f"({config.max_seq_len})")
    runners = {m: Runner(config.with_method(m), args, device) for m in methods}
    batch = auto_batch(list(runners.values()), seq) if args.batch == "auto" else int(args.batch)
    for runner in runners.values():
        runner.set_batch(batch, seq)
    # correctness first: every method starts from a finite loss near ln(vocab)
    for method, runner in runners.items():
        loss = runner.loss(runner.model).item()
        assert loss == loss and loss < 2 * torch.log(torch.tensor(config.vocab_size)).item(), \
            f"{preset} / {method}: initial loss {loss} is not finite or far above ln(vocab)"

    times: dict[str, list[float]] = {m: [] for m in methods}
    for round_ in range(args.repeats + 1 + args.compile):  # first round(s) warm up / compile
        for method, runner in runners.items():
            synchronize(device)
            start = time.perf_counter()
            runner.step()
            elapsed = time.perf_counter() - start
            if round_ > args.compile:
                times[method].append(elapsed)

    rows = []
    for method, runner in runners.items():
        step_s = statistics.median(times[method])
        tokens_per_s = batch * seq / step_s
        report = cost_report(runner.config, seq)
        train_flops_per_token = 3 * report.total_flops_per_token
        memory = runner.peak_bytes() if device.type == "cuda" else runner.saved_bytes()
        rows.append(dict(preset=preset, method=method, seq=seq, batch=batch,
                         params=report.total_params, step_ms=step_s * 1e3,
                         round_ms=[t * 1e3 for t in times[method]],
                         tokens_per_s=tokens_per_s, train_flops_per_token=train_flops_per_token,
                         achieved_flops=train_flops_per_token * tokens_per_s,
                         memory_bytes=memory))
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
        row["memory_ratio"] = row["memory_bytes"] / base["memory_bytes"]
    del runners
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_table(result: dict) -> None:
    opts = [name for name in ("compile", "activation_checkpointing", "optimizer") if result[name]]
    memory = "peak allocated" if result["device_type"] == "cuda" else "saved for backward"
    print(f"train step, {result['device']}, {result['dtype']}"
          f"{', ' + ', '.join(opts) if opts else ''}, median of {result['repeats']} rounds "
          f"(methods interleaved)")
    print(f"MFU against {result['peak_flops'] / 1e12:,.3g} TFLOP/s ({result['peak_flops_source']});"
          f" memory = {memory}; ratios against vanilla, same run")
    print(f"{'preset':<8}{'method':<18}{'seq':>6}{'batch':>7}{'step ms':>11}{'tokens/s':>12}"
          f"{'time ratio':>12}{'memory MiB':>12}{'mem ratio':>11}{'MFU %':>8}")
    for r in result["rows"]:
        print(f"{r['preset']:<8}{r['method']:<18}{r['seq']:>6}{r['batch']:>7}{r['step_ms']:>11.1f}"
              f"{r['tokens_per_s']:>12,.0f}{r['time_ratio']:>12.3f}"
              f"{r['memory_bytes'] / 2**20:>12.1f}{r['memory_ratio']:>11.3f}"
              f"{100 * r['mfu']:>8.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=[BASELINE, "depth_attention"],
                        help="vanilla is always measured (the baseline)")
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--seq", nargs="+", type=int, default=[256])
    parser.add_argument("--batch", default="4",
                        help="an integer, or 'auto' (CUDA): fill the device")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="bfloat16: autocast, float32 weights (default on CUDA); float32: "
                             "plain (default on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--optimizer", action="store_true", help="include an AdamW step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (1 is steadiest when other processes share the cores)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.batch != "auto" and not args.batch.isdigit():
        parser.error(f"--batch ({args.batch!r}) must be a positive integer or 'auto'")
    if args.batch == "auto" and device.type != "cuda":
        parser.error("--batch auto needs a CUDA device (it probes for out-of-memory)")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    methods = [BASELINE] + [m for m in args.methods if m != BASELINE]
    peak = peak_flops(device, getattr(torch, args.dtype))

    rows = []
    for preset in args.presets:
        for seq in args.seq:
            rows += measure(preset, seq, args, device, methods)
    for row in rows:
        row["mfu"] = row["achieved_flops"] / peak.value
    result = dict(device=device_name(device), device_type=device.type, dtype=args.dtype,
                  compile=args.compile, activation_checkpointing=args.activation_checkpointing,
                  optimizer=args.optimizer, repeats=args.repeats, peak_flops=peak.value,
                  peak_flops_source=peak.source, rows=rows)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
