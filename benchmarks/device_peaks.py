"""Peak memory bandwidth and dense FLOP/s of the device a benchmark runs on, for % of peak and MFU.

Known CUDA devices are looked up by name in datasheet tables (dense, i.e. without 2:4 sparsity);
anything else — the CPU, an unlisted GPU — is measured in the same run: a large tensor copy for
bandwidth ("measured copy bandwidth": bytes read + bytes written per second) and a large square
matmul for FLOP/s ("measured matmul peak"). Measured figures are what this process achieves, not
the hardware's theoretical peak, so a fraction of them reads higher than a fraction of a datasheet.

    from benchmarks.device_peaks import peak_bandwidth, peak_flops
    bw = peak_bandwidth(torch.device("cuda"))   # Peak(value=3.35e12, source='H100 SXM datasheet')
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

TB, TFLOP = 1e12, 1e12

# Bytes per second, HBM, from the vendors' datasheets.
PEAK_BANDWIDTH = {
    "H100 SXM": 3.35 * TB,
    "H100 PCIe": 2.0 * TB,
    "H200": 4.8 * TB,
    "A100 80GB": 2.0 * TB,  # SXM4 2.039 TB/s; the 80GB PCIe card is 1.935 TB/s
    "A100 40GB": 1.555 * TB,
}
# Dense FLOP/s by compute dtype. "float32" is the plain (non-tensor-core) FP32 rate, which
# applies while PyTorch leaves TF32 off (its default for matmuls); "tf32" the tensor-core rate.
PEAK_FLOPS = {
    "H100 SXM": {"bfloat16": 989 * TFLOP, "float16": 989 * TFLOP, "tf32": 494.7 * TFLOP,
                 "float32": 66.9 * TFLOP},
    "H100 PCIe": {"bfloat16": 756 * TFLOP, "float16": 756 * TFLOP, "tf32": 378 * TFLOP,
                  "float32": 51.2 * TFLOP},
    "H200": {"bfloat16": 989 * TFLOP, "float16": 989 * TFLOP, "tf32": 494.7 * TFLOP,
             "float32": 66.9 * TFLOP},
    "A100 80GB": {"bfloat16": 312 * TFLOP, "float16": 312 * TFLOP, "tf32": 156 * TFLOP,
                  "float32": 19.5 * TFLOP},
    "A100 40GB": {"bfloat16": 312 * TFLOP, "float16": 312 * TFLOP, "tf32": 156 * TFLOP,
                  "float32": 19.5 * TFLOP},
}


@dataclass(frozen=True)
class Peak:
    value: float  # bytes/s or FLOP/s
    source: str  # "H100 SXM datasheet" or "measured copy bandwidth" / "measured matmul peak"


def device_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU's model name (with "cpu" in it, so that no CPU figure
    ever reads as a GPU one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu ({model or platform.machine()}, {torch.get_num_threads()} threads)"


def known_gpu(name: str) -> str | None:
    """The row of the tables for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None."""
    upper = name.upper()
    if "H200" in upper:
        return "H200"
    if "H100" in upper:
        if "PCIE" in upper:
            return "H100 PCIe"
        if "SXM" in upper or "HBM3" in upper:  # the SXM part reports itself as "H100 80GB HBM3"
            return "H100 SXM"
        return None  # NVL and other variants: measured
    if "A100" in upper:
        if "80GB" in upper:
            return "A100 80GB"
        if "40GB" in upper:
            return "A100 40GB"
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 3,
                     repeats: int = 10, flush_bytes: int = 0) -> dict[str, list[float]]:
    """Milliseconds of each of ``repeats`` calls of every function after ``warmup`` untimed
    rounds, the functions interleaved (one call of each per round) so that a busy machine slows
    all of them alike. CUDA events on a GPU, perf_counter on the CPU. With ``flush_bytes``, a
    buffer that large is overwritten before every call so that no input is still in cache."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    scratch = torch.empty(flush_bytes, dtype=torch.int8, device=device) if flush_bytes else None
    times: dict[str, list[float]] = {name: [] for name in fns}
    events = []
    for _ in range(repeats):
        for name, fn in fns.items():
            if scratch is not None:
                scratch.zero_()
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events.append((name, start, end))
            else:
                start_s = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start_s) * 1e3)
    synchronize(device)
    for name, start, end in events:
        times[name].append(start.elapsed_time(end))
    return times


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3,
            repeats: int = 10) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    return time_interleaved({"fn": fn}, device, warmup, repeats)["fn"]


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None,
                           repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` on a large buffer, counting the read and the write;
    the best of ``repeats``. Default size: 256 MiB on CPU, 1 GiB on GPU (well beyond caches)."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best_ms = min(time_ms(lambda: dst.copy_(src), device, warmup=1, repeats=repeats))
    return 2 * src.numel() * 4 / (best_ms / 1e3)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                         repeats: int = 3) -> float:
    """FLOP/s of an n × n × n matmul (2n³ FLOPs) in ``dtype``; the best of ``repeats``.
    Default n: 8192 on GPU; on CPU doubled from 256 while one product takes under 50 ms, up to
    2048 (some CPUs multiply bfloat16 hundreds of times slower than float32)."""
    if n is None and device.type != "cuda":
        n = 256
        while n < 2048 and min(time_ms(_matmul(n, dtype, device), device, 1, 1)) < 50:
            n *= 2
    n = n or 8192
    best_ms = min(time_ms(_matmul(n, dtype, device), device, warmup=1, repeats=repeats))
    return 2 * n**3 / (best_ms / 1e3)


def _matmul(n: int, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return lambda: a @ b


def peak_bandwidth(device: torch.device) -> Peak:
    """Datasheet HBM bandwidth of a known GPU; otherwise the copy bandwidth measured now."""
    if device.type == "cuda":
        gpu = known_gpu(torch.cuda.get_device_name(device))
        if gpu is not None:
            return Peak(PEAK_BANDWIDTH[gpu], f"{gpu} datasheet")
    return Peak(measure_copy_bandwidth(device), "measured copy bandwidth")


def peak_flops(device: torch.device, dtype: torch.dtype) -> Peak:
    """Datasheet dense FLOP/s of a known GPU for the compute dtype (TF32 when PyTorch allows it
    for float32 matmuls); otherwise a matmul measured now in ``dtype``."""
    if device.type == "cuda":
        gpu = known_gpu(torch.cuda.get_device_name(device))
        key = str(dtype).removeprefix("torch.")
        if key == "float32" and torch.backends.cuda.matmul.allow_tf32:
            key = "tf32"
        if gpu is not None and key in PEAK_FLOPS[gpu]:
            return Peak(PEAK_FLOPS[gpu][key], f"{gpu} datasheet, dense {key}")
    return Peak(measure_matmul_flops(device, dtype),
                f"measured matmul peak, {str(dtype).removeprefix('torch.')}")
