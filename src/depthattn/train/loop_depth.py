"""Training a looped model at random depth (Huginn, Geiping et al., 2025, arXiv 2502.05171
§3.3): the iterations r the looped block runs at each optimizer step, and through how many of
them the gradient flows. With r̄ = ``TrainConfig.loop_mean_rate``:

    λ ~ LogNormal(μ = ln r̄ − σ²/2, σ),    r = Poisson(λ) + 1,    r = min(r, r_max) if capped

so E[λ] = r̄ and E[r] = r̄ + 1 before the cap (Huginn: r̄ = 32, σ = 0.5).

r is a pure function of (seed, step), from a generator of its own
(``default_rng([seed, step, LOOP_DEPTH_STREAM])``), apart from the data order and torch's RNG:
a resumed run sees the same r. Every micro batch of a step runs at that step's r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from depthattn.train.config import TrainConfig
from depthattn.utils.checks import require_int, require_number

if TYPE_CHECKING:
    from depthattn.model.config import ModelConfig

# The third entropy word of the sampler's seed: keeps its stream apart from the data order's.
LOOP_DEPTH_STREAM = 0x4C4F4F50  # "LOOP"


def sample_loop_iterations(seed: int, step: int, mean_rate: float, sigma: float = 0.5,
                           max_iterations: int = 0) -> int:
    """r ~ Poisson(LogNormal(ln mean_rate − sigma²/2, sigma)) + 1 at optimizer step ``step``.

    mean_rate: r̄ > 0, the mean of the lognormal rate, so E[r] = mean_rate + 1 uncapped.
    max_iterations: r_max >= 1 caps r (and lowers the mean); 0 = no cap.

    >>> sample_loop_iterations(seed=0, step=7, mean_rate=3.0)  # the same at every call
    2
    """
    require_int("seed", seed, 0)
    require_int("step", step, 0)
    require_number("mean_rate", mean_rate, 0.0, strict=True)
    require_number("sigma", sigma, 0.0, strict=True)
    require_int("max_iterations", max_iterations, 0, hint=" (0 = no cap)")
    rng = np.random.default_rng([seed, step, LOOP_DEPTH_STREAM])
    rate = rng.lognormal(math.log(mean_rate) - sigma ** 2 / 2, sigma)
    r = int(rng.poisson(rate)) + 1
    return min(r, max_iterations) if max_iterations else r


@dataclass(frozen=True)
class LoopDepth:
    """One training step's depth: what ``CausalLM.loss`` takes as keyword arguments."""

    loop_iterations: int | None  # r; None: the model's configured loop_iterations
    backprop_iterations: int | None  # the last b of the r iterations take gradients; None: all

    def kwargs(self) -> dict[str, Any]:
        """Only the arguments that differ from the plain call: {} for a model trained as
        configured, so that its (compiled) loss is called exactly as before."""
        return {name: value for name, value in vars(self).items() if value is not None}


def loop_depth_at(config: TrainConfig, model_config: ModelConfig, step: int) -> LoopDepth:
    """The depth of optimizer step ``step`` (0-based) of a run, after
    ``config.check_loop_training(model_config)`` (``TrainConfig.model_config`` runs it).

    ``fixed``: the configured r at every step; ``poisson_lognormal``: ``sample_loop_iterations``
    with the run's seed. ``backprop_iterations`` 0 in the config (all) is None here."""
    r = None
    if config.loop_sampling == "poisson_lognormal":
        r = sample_loop_iterations(config.seed, step, config.loop_rate(model_config),
                                   config.loop_sigma, config.loop_max_iterations)
    return LoopDepth(r, config.backprop_iterations or None)


def training_depths(config: TrainConfig, model_config: ModelConfig) -> set[int]:
    """Every r a run's steps will run at (with the configured one, which evaluation uses): what a
    compiled run needs one graph for. Capped sampling gives at most 1 .. r_max without drawing."""
    depths = {model_config.loop_iterations}
    if config.loop_sampling != "poisson_lognormal":
        return depths
    if config.loop_max_iterations:
        return depths | set(range(1, config.loop_max_iterations + 1))
    return depths | {loop_depth_at(config, model_config, step).loop_iterations  # type: ignore[misc]
                     for step in range(config.steps)}
