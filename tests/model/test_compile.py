"""torch.compile of the whole model against eager, forward and backward (slow: compiling takes
tens of seconds on CPU). Tolerances: fp32, atol 1e-5 on logits and 1e-6 on gradients."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, ModelConfig


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_compiled_model_matches_eager(method):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=4,
                         num_heads=4, num_kv_heads=2, head_dim=16, max_seq_len=64,
                         method=method, method_options={"stride": 1} if method != "vanilla" else {})
    model = CausalLM(config)
    ids = torch.randint(0, 256, (2, 32))
    grads = []
    for forward in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        logits = forward(ids)
        logits.logsumexp(-1).mean().backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = grads
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-6, rtol=1e-4)
