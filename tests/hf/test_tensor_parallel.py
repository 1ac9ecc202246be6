"""Tensor parallelism as transformers runs it (``from_pretrained(..., distributed_config=
DistributedConfig(tp_plan="auto"))``, our ``base_model_tp_plan``: Qwen3's), on CPU: two gloo
processes under torchrun (tensor_parallel_worker.py), each computing half of the heads and of
the MLP, against the same saved model in this one process. Vanilla and Depth-Attention (4
layers, 4 query heads sharing 2 kv heads: one whole GQA group per rank, so the depth mix runs on
the rank), and an MLA model with the latent residual (DeepseekV3's plan), with left padding:

- logits without gradient (transformers' local-tensor path) and the loss;
- every parameter's gradient of one backward (the DTensor path), shards gathered;
- greedy decoding with the dynamic and the static cache (the static one sized to a rank's kv heads).

fp32 throughout: only the order of the sums differs (the all-reduce of the ranks' partial
o_proj, down_proj and embedding products), hence RTOL/ATOL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import depthattn
from depthattn.hf import DepthAttnForCausalLM
from tests.conftest import random_ids, tiny_model

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is unavailable", allow_module_level=True)

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")
# model name → tiny_model overrides: GQA with and without Depth-Attention, and multi-head latent
# attention (DeepseekV3's plan: 2 of 4 heads per rank, the latent whole on each) with the latent
# residual, which mixes whole entries across layers
MLA = dict(num_kv_heads=4, head_dim=None, attention="mla", kv_lora_rank=12, q_lora_rank=10,
           qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=10)
MODELS = {"vanilla": dict(method="vanilla"), "depth_attention": dict(method="depth_attention"),
          "mla_latent_residual": dict(method="value_residual", **MLA)}
METHODS = tuple(MODELS)
RTOL, ATOL = 1e-4, 1e-5  # logits and loss
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
NEW_TOKENS = 4


def inputs() -> dict:
    ids = random_ids(2, 9, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100), "new_tokens": NEW_TOKENS}


def single_process(folder: Path, batch: dict) -> dict:
    model = DepthAttnForCausalLM.from_pretrained(folder)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = model(input_ids=ids, attention_mask=mask, labels=batch["labels"]).loss
    loss.backward()
    generate = {"attention_mask": mask, "max_new_tokens": NEW_TOKENS, "do_sample": False,
                "pad_token_id": 0}
    return {"logits": logits, "loss": loss.detach(),
            "grads": {name: p.grad for name, p in model.named_parameters()},
            "generated": model.generate(ids, **generate),
            "generated_static": model.generate(ids, cache_implementation="static", **generate)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """method → (the two-process results, this process's), one torchrun for both models."""
    root = tmp_path_factory.mktemp("tp")
    folders = []
    for method in METHODS:
        core = tiny_model(seed=0, num_layers=4, **MODELS[method])
        DepthAttnForCausalLM.from_core(core).save_pretrained(root / method)
        folders.append(str(root / method))
    batch = inputs()
    torch.save(batch, root / "inputs.pt")
    source = str(Path(depthattn.__file__).parents[1])  # the worker imports this depthattn
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", str(WORKER), str(root / "inputs.pt"),
                             str(root / "out.pt"), *folders],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    parallel = torch.load(root / "out.pt")
    return {method: (tp, single_process(Path(folder), batch))
            for method, tp, folder in zip(METHODS, parallel, folders)}


@pytest.mark.parametrize("method", METHODS)
def test_logits_and_loss_equal_the_single_process_model(runs, method):
    tp, one = runs[method]
    torch.testing.assert_close(tp["logits"], one["logits"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(tp["loss"], one["loss"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_equal_the_single_process_model(runs, method):
    tp, one = runs[method]
    assert tp["grads"].keys() == one["grads"].keys()
    for name, grad in one["grads"].items():
        assert grad is not None and bool(grad.abs().max() > 0), name  # every weight is trained
        torch.testing.assert_close(tp["grads"][name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", METHODS)
def test_greedy_decoding_equals_the_single_process_model(runs, method):
    tp, one = runs[method]
    assert one["generated"].shape[1] == 9 + NEW_TOKENS
    assert torch.equal(tp["generated"], one["generated"])
    assert torch.equal(tp["generated_static"], one["generated_static"])
