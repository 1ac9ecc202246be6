"""Run under torchrun by test_tensor_parallel.py: for each saved model folder, load it with
transformers' tensor parallelism (``DistributedConfig(tp_plan="auto")``: the config's
``base_model_tp_plan``, the head's ``_tp_plan``) and save, from rank 0, what the test compares
with the single-process model: logits without gradient, the loss and every parameter's gradient
(gathered from its shards), and greedy tokens decoded with the dynamic and the static cache.

    torchrun --nproc-per-node 2 tensor_parallel_worker.py INPUTS.pt OUT.pt DIR [DIR ...]

INPUTS.pt holds input_ids, attention_mask, labels and new_tokens (to decode); OUT.pt gets one
dict per folder."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers.distributed import DistributedConfig

from depthattn.hf import DepthAttnForCausalLM


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank: a DTensor's shards gathered, a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def run(folder: str, inputs: dict) -> dict:
    model = DepthAttnForCausalLM.from_pretrained(
        folder, distributed_config=DistributedConfig(tp_plan="auto"))
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    attention = model.model.layers[0].self_attn
    q_proj = getattr(attention, "q_proj", None) or attention.q_b_proj  # MLA with a query rank
    assert isinstance(q_proj.weight, DTensor) and \
        q_proj.weight.to_local().shape[0] * 2 == q_proj.weight.shape[0], \
        "the query projection is not split between the two ranks"
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {name: full(p.grad).clone() for name, p in model.named_parameters()}
    generate = {"attention_mask": mask, "max_new_tokens": inputs["new_tokens"],
                "do_sample": False, "pad_token_id": 0}
    return {"logits": logits, "loss": loss.detach(), "grads": grads,
            "generated": model.generate(ids, **generate),
            "generated_static": model.generate(ids, cache_implementation="static", **generate)}


def main() -> int:
    torch.set_num_threads(1)
    inputs_file, out_file, *folders = sys.argv[1:]
    inputs = torch.load(inputs_file)
    results = [run(folder, inputs) for folder in folders]
    if dist.get_rank() == 0:
        torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
