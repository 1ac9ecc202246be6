"""The non-finite guard: a step whose loss or gradient norm is NaN or infinite is skipped (AdamW
would write the NaN into every weight and moment for good), counted, and after
``max_bad_steps`` such steps in a row the run stops. The check is the one point where a step
waits for the device; the values are read only when one is not finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthattn.utils.errors import DepthAttnError


class NonFiniteTraining(DepthAttnError):
    """Too many non-finite steps in a row; the message names the step and the last good
    checkpoint."""


@dataclass
class NonFiniteGuard:
    max_bad_steps: int
    skipped_steps: int = 0  # over the whole run (kept in checkpoints)
    streak: int = 0  # consecutive skipped steps up to now

    def reason_to_skip(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
        """Why this step must not update the weights, or None when it may."""
        if bool(torch.isfinite(loss) & torch.isfinite(grad_norm.to(loss.device))):
            return None
        if not math.isfinite(loss.item()):
            return f"non-finite loss ({loss.item()})"
        return f"non-finite gradient norm ({grad_norm.item()})"

    def record(self, skipped: bool) -> None:
        if skipped:
            self.skipped_steps += 1
            self.streak += 1
        else:
            self.streak = 0

    @property
    def exhausted(self) -> bool:
        return self.streak >= self.max_bad_steps

    def state(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps, "bad_streak": self.streak}

    def restore(self, state: dict[str, int]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.streak = int(state.get("bad_streak", 0))
