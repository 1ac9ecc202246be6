"""Golden losses: every registered method trained for a few steps on a fixed token file.

The pinned numbers were printed by the code before the package was reshaped (d558664): a
refactoring that moves code must reproduce them bit for bit. A change that alters the maths
on purpose updates them and says why in its commit.

Bit for bit holds on the kind of CPU the numbers were recorded on (``RECORDED_ON``): another
vendor's or another instruction set's matrix kernels round differently (an AMD EPYC and an
Intel Xeon print different quickstart losses from the same code). Elsewhere the losses must
agree to ``OTHER_CPU_RTOL``, far tighter than any change of the maths moves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from depthattn.data.token_import import import_tokens
from depthattn.train import TrainConfig, train

VOCAB = 96
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"

# (CPU vendor, torch's CPU capability, torch version) of the machine that printed GOLDEN
RECORDED_ON = ("GenuineIntel", "AVX512", "2.13.0")
OTHER_CPU_RTOL = 1e-5

# case → training losses of steps 1..4 and the final validation loss, as float.hex
GOLDEN: dict[str, list[str]] = {
    "attnres": [
        "0x1.24eb1c0000000p+2", "0x1.24389c0000000p+2", "0x1.221af20000000p+2",
        "0x1.22c8940000000p+2", "0x1.227a0f3659cc0p+2",
    ],
    "block_attnres": [
        "0x1.24f3e20000000p+2", "0x1.24288f0000000p+2", "0x1.2226080000000p+2",
        "0x1.22ea260000000p+2", "0x1.228b6319fe6cbp+2",
    ],
    "denseformer": [
        "0x1.24f81f0000000p+2", "0x1.242de80000000p+2", "0x1.222aa40000000p+2",
        "0x1.22ecf90000000p+2", "0x1.2296bf68c3590p+2",
    ],
    "depth_attention": [
        "0x1.24b79f0000000p+2", "0x1.244c460000000p+2", "0x1.20eeb00000000p+2",
        "0x1.21401e0000000p+2", "0x1.22103f6276276p+2",
    ],
    "depth_attention+mhc": [
        "0x1.23ee8b0000000p+2", "0x1.2395220000000p+2", "0x1.22f96a0000000p+2",
        "0x1.2380d50000000p+2", "0x1.2279fad4ad4adp+2",
    ],
    "hyper_connections": [
        "0x1.24f84b0000000p+2", "0x1.242a810000000p+2", "0x1.222a200000000p+2",
        "0x1.23037a0000000p+2", "0x1.229b1fa7c7494p+2",
    ],
    "looped_depth_attention": [
        "0x1.24a7df0000000p+2", "0x1.243b3c0000000p+2", "0x1.21280b0000000p+2",
        "0x1.2109eb0000000p+2", "0x1.2270df03f03f0p+2",
    ],
    "mhc": [
        "0x1.2250f00000000p+2", "0x1.24daae0000000p+2", "0x1.2430040000000p+2",
        "0x1.2409a50000000p+2", "0x1.232de3d70a3d7p+2",
    ],
    "muddformer": [
        "0x1.234ea80000000p+2", "0x1.2363b60000000p+2", "0x1.225c1f0000000p+2",
        "0x1.22773e0000000p+2", "0x1.22d11f42f42f4p+2",
    ],
    "value_residual": [
        "0x1.2477310000000p+2", "0x1.249d5c0000000p+2", "0x1.20b54b0000000p+2",
        "0x1.21979c0000000p+2", "0x1.222e44d319fe7p+2",
    ],
    "vanilla": [
        "0x1.24f81f0000000p+2", "0x1.242b610000000p+2", "0x1.222d080000000p+2",
        "0x1.22e9980000000p+2", "0x1.2296fbb788455p+2",
    ],
}


def write_tokens(folder: Path) -> tuple[Path, Path]:
    """A word-level tokenizer of VOCAB ids and 64 documents of ids drawn from a fixed seed."""
    vocab = {EOS_TOKEN: 0, PAD_TOKEN: 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=PAD_TOKEN))
    tokenizer.save(str(folder / "tokenizer.json"))
    rng = np.random.default_rng(1234)
    docs = []
    for _ in range(64):
        # a little structure to learn: runs of a few repeated ids
        doc = np.repeat(rng.integers(2, VOCAB, int(rng.integers(10, 40))), 2)
        docs.append(np.r_[doc, 0])
    np.save(folder / "ids.npy", np.concatenate(docs).astype(np.uint16))
    return folder / "ids.npy", folder / "tokenizer.json"


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    ids, tokenizer = write_tokens(root)
    manifest = import_tokens([ids], tokenizer, root / "prepared", val_fraction=0.1,
                             progress=False)
    return manifest.parent


SHAPE = dict(hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4, num_kv_heads=2,
             head_dim=8)
LOOPED = dict(prelude_layers=1, loop_layers=2, loop_iterations=2, loop_injection="concat")

# case → (method, model overrides, training overrides): every registered method, a
# combination, and a looped model trained at sampled depth with truncated backpropagation
CASES: dict[str, tuple[str, dict, dict]] = {
    **{m: (m, {}, {}) for m in ["vanilla", "value_residual", "depth_attention", "denseformer",
                                "hyper_connections", "mhc", "attnres", "block_attnres",
                                "muddformer"]},
    "depth_attention+mhc": ("depth_attention+mhc", {}, {}),
    "looped_depth_attention": ("depth_attention", LOOPED,
                               dict(loop_sampling="poisson_lognormal", backprop_iterations=1)),
}


def golden_losses(case: str, folder: Path, run_dir: Path) -> list[float]:
    method, model, training = CASES[case]
    config = TrainConfig(
        run_dir=str(run_dir), data=str(folder), method=method,
        model_overrides={**SHAPE, **model}, **training,
        seq_len=16, micro_batch_size=2, global_batch_tokens=64, steps=4, lr=3e-3,
        warmup_ratio=0.25, log_every=1, eval_every=4, eval_windows=2, checkpoint_every=4,
        progress=False, tensorboard=False, seed=0)
    result = train(config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    return [*losses, result.val.loss]


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_equal_the_pinned_ones(case: str, token_folder: Path, tmp_path: Path) -> None:
    losses = golden_losses(case, token_folder, tmp_path / "run")
    if this_cpu() == RECORDED_ON:
        assert [x.hex() for x in losses] == GOLDEN[case]
    else:
        pinned = [float.fromhex(x) for x in GOLDEN[case]]
        assert losses == pytest.approx(pinned, rel=OTHER_CPU_RTOL, abs=0)


def this_cpu() -> tuple[str, str, str]:
    vendor = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return vendor, torch.backends.cpu.get_cpu_capability(), torch.__version__.split("+")[0]


def test_every_registered_method_is_pinned() -> None:
    from depthattn.methods import method_names

    assert set(method_names()) <= set(CASES)
