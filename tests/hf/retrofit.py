"""The check both retrofit conversions share (from Qwen3 and from DeepseekV3 to a method)."""

from __future__ import annotations

import torch


def assert_retrofit(model: torch.nn.Module, reference: torch.nn.Module, ids: torch.Tensor) -> None:
    """``model`` holds exactly ``reference``'s weights, yet its finite logits differ: the method
    mixes across layers with no parameter of its own."""
    ref_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name
    with torch.no_grad():
        logits, theirs = model(ids).logits, reference(ids).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, theirs, atol=1e-3)  # it mixes
