"""Training at random depth, the training side (issue 15): the per-step depth sampler (Huginn's
r ~ Poisson(LogNormal(ln r̄ − σ²/2, σ)) + 1, a pure function of (seed, step)), the TrainConfig
fields that drive it, and the shipped looped quickstart."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from depthattn.train import train
from depthattn.train.config import TrainConfig, load_train_config, shipped_configs
from depthattn.train.loop_depth import (
    LoopDepth,
    loop_depth_at,
    sample_loop_iterations,
    training_depths,
)
from tests.conftest import tiny_config

LOOPED = {"num_layers": 4, "prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3,
          "loop_injection": "add"}


def looped_train_config(**fields) -> TrainConfig:
    return TrainConfig(**{"model_overrides": dict(LOOPED), **fields})


# --- the sampler -----------------------------------------------------------------------------------
def test_the_sampler_is_a_pure_function_of_seed_and_step():
    steps = list(range(300))
    forward = [sample_loop_iterations(5, s, 3.0) for s in steps]
    shuffled = steps[:]
    random.Random(0).shuffle(shuffled)
    by_step = {s: sample_loop_iterations(5, s, 3.0) for s in shuffled}  # any order: a resume
    assert [by_step[s] for s in steps] == forward
    assert len(set(forward)) > 3  # it does vary with the step
    assert forward != [sample_loop_iterations(6, s, 3.0) for s in steps]  # and with the seed


def test_the_sampler_draws_from_no_shared_generator():
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    sample_loop_iterations(0, 3, 4.0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    # nor the data order's stream, default_rng([seed, step]): a stream of its own
    assert sample_loop_iterations(0, 3, 4.0) == sample_loop_iterations(0, 3, 4.0)


@pytest.mark.parametrize("mean_rate,sigma", [(3.0, 0.5), (1.5, 0.8)])
def test_the_sampler_has_huginns_mean_and_variance(mean_rate, sigma):
    """E[r] = r̄ + 1 and Var[r] = E[λ] + Var[λ] = r̄ + r̄²(e^{σ²} − 1). N = 20000 puts the
    tolerances at about 4 standard errors, and they fail the near misses: μ = ln r̄ (no − σ²/2)
    gives E[r] = r̄ e^{σ²/2} + 1 (+0.40 at r̄ = 3), r̄ read as E[r] gives r̄, σ² for σ changes the
    variance by a third."""
    r = np.array([sample_loop_iterations(1, step, mean_rate, sigma) for step in range(20000)])
    assert r.min() >= 1
    assert abs(r.mean() - (mean_rate + 1)) < 0.07
    variance = mean_rate + mean_rate ** 2 * (math.exp(sigma ** 2) - 1)
    assert abs(r.var() / variance - 1) < 0.08


def test_the_cap():
    r = [sample_loop_iterations(0, step, 4.0, max_iterations=5) for step in range(2000)]
    assert max(r) == 5 and min(r) >= 1
    uncapped = [sample_loop_iterations(0, step, 4.0) for step in range(2000)]
    assert r == [min(u, 5) for u in uncapped]


@pytest.mark.parametrize("kwargs,message", [
    ({"mean_rate": 0.0}, r"mean_rate \(0.0\) must be a positive number"),
    ({"mean_rate": math.inf}, "mean_rate"),
    ({"sigma": 0.0}, r"sigma \(0.0\) must be a positive number"),
    ({"max_iterations": -1}, r"max_iterations \(-1\) must be an integer >= 0 \(0 = no cap\)"),
    ({"step": -1}, r"step \(-1\) must be an integer >= 0"),
    ({"seed": True}, r"seed \(True\) must be an integer"),
])
def test_the_sampler_refuses_bad_arguments(kwargs, message):
    arguments = {"seed": 0, "step": 0, "mean_rate": 3.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_loop_iterations(**arguments)


# --- a run's depth per step ------------------------------------------------------------------------
def test_loop_depth_at_a_step():
    fixed = looped_train_config()
    model = fixed.model_config()
    assert loop_depth_at(fixed, model, 7) == LoopDepth(None, None)
    assert loop_depth_at(fixed, model, 7).kwargs() == {}  # the loss is called as before
    truncated = looped_train_config(backprop_iterations=2)
    assert loop_depth_at(truncated, model, 7).kwargs() == {"backprop_iterations": 2}
    sampled = looped_train_config(loop_sampling="poisson_lognormal", seed=4,
                                  backprop_iterations=1, loop_max_iterations=8)
    # loop_mean_rate 0: r̄ = loop_iterations − 1 = 2, so E[r] is the configured 3
    assert sampled.loop_rate(model) == 2.0
    for step in range(20):
        depth = loop_depth_at(sampled, model, step)
        assert depth == LoopDepth(sample_loop_iterations(4, step, 2.0, 0.5, 8), 1)
    explicit = dataclasses.replace(sampled, loop_mean_rate=5.0)
    assert loop_depth_at(explicit, model, 3).loop_iterations == \
        sample_loop_iterations(4, 3, 5.0, 0.5, 8)


# --- TrainConfig fields ----------------------------------------------------------------------------
@pytest.mark.parametrize("fields,message", [
    ({"loop_sampling": "poisson_lognorm"},
     r"loop_sampling \('poisson_lognorm'\) must be one of fixed, poisson_lognormal \(did you"),
    ({"loop_sigma": 0.0}, r"loop_sigma \(0.0\) must be a positive number"),
    ({"loop_mean_rate": -1.0}, r"loop_mean_rate \(-1.0\) must be a finite number >= 0"),
    ({"loop_max_iterations": -2}, r"loop_max_iterations \(-2\) must be an integer >= 0"),
    ({"backprop_iterations": -1}, r"backprop_iterations \(-1\) must be an integer >= 0 \(0 ="),
    ({"backprop_iterations": 1.5}, r"backprop_iterations \(1.5\) must be an integer"),
    ({"loop_mean_rate": 3.0}, r"loop_mean_rate \(3.0\) is read only by loop_sampling 'pois"),
    ({"loop_max_iterations": 6}, r"loop_max_iterations \(6\) is read only"),
])
def test_bad_loop_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        looped_train_config(**fields)


@pytest.mark.parametrize("fields,overrides,message", [
    ({"loop_sampling": "poisson_lognormal"}, {"loop_layers": 0, "loop_iterations": 1},
     r"loop_sampling 'poisson_lognormal' needs a looped model"),
    ({"backprop_iterations": 2}, {"loop_layers": 0, "loop_iterations": 1},
     r"backprop_iterations \(2\) needs a looped model"),
    ({"loop_sampling": "poisson_lognormal"}, {"loop_iterations": 1},
     r"loop_mean_rate 0 takes the rate from the model's loop_iterations - 1 = 0"),
    ({"backprop_iterations": 2}, {"loop_injection": "none"},
     r"backprop_iterations \(2\) cuts the gradient .* loop_injection 'none'"),
    ({"loop_sampling": "poisson_lognormal", "backprop_iterations": 5},
     {"loop_injection": "none"}, "loop_injection 'none'"),
])
def test_loop_training_checked_against_the_model(fields, overrides, message):
    config = looped_train_config(**fields)
    config.model_overrides.update(overrides)
    with pytest.raises(ValueError, match=message):
        config.model_config()  # what the trainer and compare call before any work
    with pytest.raises(ValueError, match=message):
        config.check_loop_training(tiny_config(**{**LOOPED, **overrides}))


def test_loop_training_that_is_allowed():
    # b >= r at a fixed depth cuts nothing: injection none is fine
    config = looped_train_config(backprop_iterations=3)
    config.model_overrides["loop_injection"] = "none"
    config.model_config()
    looped_train_config(loop_sampling="poisson_lognormal", loop_mean_rate=2.5,
                        loop_max_iterations=6, backprop_iterations=2).model_config()


def test_loop_fields_round_trip_through_a_file(tmp_path):
    config = looped_train_config(loop_sampling="poisson_lognormal", loop_sigma=0.25,
                                 backprop_iterations=2)
    config.save(tmp_path / "config.json")
    assert load_train_config(tmp_path / "config.json") == config
    overridden = load_train_config(tmp_path / "config.json", ["loop_max_iterations=9"])
    assert overridden.loop_max_iterations == 9


# --- the shipped looped quickstart -----------------------------------------------------------------
def test_the_looped_quickstart_loads_and_validates_for_every_arm():
    from depthattn.experiments.compare import plan_comparison

    assert "looped_quickstart" in shipped_configs()
    config = load_train_config("looped_quickstart")
    model = config.model_config()
    assert model.looped and model.loop_injection != "none"
    assert config.loop_sampling == "poisson_lognormal" and config.backprop_iterations >= 1
    arms = ["vanilla", "value_residual", "depth_attention:sources=applications",
            "depth_attention:sources=recurrent"]
    runs, baseline = plan_comparison(config, arms, [0, 1, 2])
    assert baseline == "vanilla" and [r.label for r in runs] == arms
    for run in runs:
        resolved = dataclasses.replace(config, method=run.method,
                                       method_options=run.options).model_config()
        assert resolved.num_applications == 8  # at the configured r: the quickstart's compute
    # the mean forward depth stays near the configured r (the cap lowers it a little)
    r = [loop_depth_at(config, model, step).loop_iterations for step in range(config.steps)]
    assert max(r) <= config.loop_max_iterations
    assert abs(np.mean(r) - model.loop_iterations) < 0.5


# --- compiled training at sampled depth ------------------------------------------------------------
def test_training_depths_are_every_r_a_run_will_see():
    fixed = looped_train_config()
    assert training_depths(fixed, fixed.model_config()) == {3}
    capped = looped_train_config(loop_sampling="poisson_lognormal", loop_max_iterations=5)
    assert training_depths(capped, capped.model_config()) == {1, 2, 3, 4, 5}
    uncapped = looped_train_config(loop_sampling="poisson_lognormal", loop_mean_rate=6.0,
                                   steps=40, seed=1)
    model = uncapped.model_config()
    drawn = {loop_depth_at(uncapped, model, s).loop_iterations for s in range(40)}
    assert training_depths(uncapped, model) == drawn | {3}
    assert len(drawn) > 8  # more than Dynamo's default recompile limit


def test_compiled_training_at_more_than_eight_depths_stays_compiled(tiny_train_config,
                                                                    monkeypatch, caplog):
    """Dynamo makes one graph per r; past its recompile limit (8) a run used to go eager for
    every new r. The trainer raises the limit to the run's depths. (The eager backend: Dynamo's
    guards and limit are the same, without Inductor's minutes of code generation.)"""
    from depthattn.train import trainer

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(trainer.torch, "compile",
                        lambda fn, **kw: real_compile(fn, backend=counting_backend, **kw))
    torch._dynamo.reset()
    looped = {**tiny_train_config().model_overrides, **LOOPED}
    config = tiny_train_config(model_overrides=looped, method="depth_attention", compile=True,
                               loop_sampling="poisson_lognormal", loop_mean_rate=6.0, seed=1,
                               steps=14, eval_every=0, checkpoint_every=0)
    depths = {loop_depth_at(config, config.model_config(), s).loop_iterations
              for s in range(config.steps)}
    assert len(depths) > 8
    with caplog.at_level("WARNING", logger="torch._dynamo"):
        train(config)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert len(graphs) >= len(depths)  # a graph for every depth, none left to eager
    torch._dynamo.reset()


# --- resuming a sampled-depth run ------------------------------------------------------------------
def test_a_resumed_sampled_depth_run_equals_the_uninterrupted_one(tiny_train_config, tmp_path,
                                                                  monkeypatch):
    """r is a function of (seed, step), so a run stopped after its step-10 checkpoint and resumed
    with `depthattn train --resume` must run steps 11 .. 20 at the depths of the uninterrupted
    run, with the gradient cut after b = 2 iterations where r > 2. Everything runs in this
    process on one intra-op thread (tests/conftest.py), so equal means bit for bit: the logged
    records (timings aside) and every final weight are compared exactly, with no tolerance."""
    from safetensors.torch import load_file

    from depthattn import CausalLM
    from depthattn.cli import main
    from depthattn.data.loader import TrainBatches
    from depthattn.train.metrics import read_metrics

    depths: list[tuple[int | None, int | None]] = []  # (r, b) of every training loss call
    real_loss = CausalLM.loss

    def recording_loss(self, *args, **kwargs):
        if self.training:  # not evaluation, which runs at the configured depth
            depths.append((kwargs.get("loop_iterations"), kwargs.get("backprop_iterations")))
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(CausalLM, "loss", recording_loss)
    looped = {**tiny_train_config().model_overrides, **LOOPED}

    def config(name: str) -> TrainConfig:
        return tiny_train_config(run_dir=str(tmp_path / name), model_overrides=looped,
                                 method_options={"sources": "recurrent"},
                                 loop_sampling="poisson_lognormal", loop_max_iterations=6,
                                 backprop_iterations=2, steps=20, checkpoint_every=10)

    straight_config = config("straight")
    straight = train(straight_config)
    sampled = [r for r, _ in depths]
    assert len(sampled) == 20 and {b for _, b in depths} == {2}
    model_config = straight_config.model_config()
    assert sampled == [loop_depth_at(straight_config, model_config, s).loop_iterations
                       for s in range(20)]
    assert len(set(sampled[10:])) >= 3  # r varies over the resumed steps ...
    assert max(sampled[10:]) > 2 >= min(sampled[10:])  # ... cut (r > b) on some, not on others

    original = TrainBatches.batch

    def crash_at_step_13(self, step):
        if step == 13:
            raise KeyboardInterrupt
        return original(self, step)

    depths.clear()
    monkeypatch.setattr(TrainBatches, "batch", crash_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"))
    monkeypatch.setattr(TrainBatches, "batch", original)
    assert [r for r, _ in depths] == sampled[:13]
    depths.clear()
    assert main(["train", "--resume", f"run_dir={tmp_path / 'resumed'}"]) == 0
    assert [r for r, _ in depths] == sampled[10:]  # from the step-10 checkpoint, at the same r

    def records(name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")}
                for r in read_metrics(tmp_path / name)]

    assert [r["step"] for r in records("resumed") if "loss" in r] == list(range(1, 21))
    assert records("resumed") == records("straight")  # losses, grad norms, val losses
    weights = load_file(straight.run_dir / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert weights.keys() == resumed.keys()
    for name, tensor in weights.items():
        assert torch.equal(resumed[name], tensor), name
