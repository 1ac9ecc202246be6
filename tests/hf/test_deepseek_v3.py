"""Dense DeepseekV3 checkpoints written by transformers itself ↔ depthattn's MLA
(docs/method.md §9; depthattn.model.deepseek_v3_names, depthattn.hf.convert), and the
`depthattn convert --from-deepseek-v3 / --to-deepseek-v3` commands on them.

With ``vanilla`` our model must compute what ``DeepseekV3ForCausalLM`` computes on the same
weights (first_k_dense_replace = num_layers: no mixture-of-experts layer), with the RoPE dims
interleaved or not, with and without a query rank. Every weight is random, norm gains
included (q_a_layernorm, kv_a_layernorm among them)."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

from depthattn import KVCache, ModelConfig
from depthattn.cli.convert import add_convert_arguments, run_convert
from depthattn.hf import DepthAttnForCausalLM
from depthattn.hf.convert import from_deepseek_v3, from_qwen3, to_deepseek_v3, to_qwen3
from depthattn.io import load_model
from depthattn.model.deepseek_v3_names import fields_from_deepseek_v3
from tests.hf.retrofit import assert_retrofit

LAYERS = 3
# d_c 24, d_rope 8, d_nope 12, d_v 10, H 4: every width differs, so a swapped split fails
GEOMETRY = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 80,
            "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 4,
            "kv_lora_rank": 24, "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10,
            "first_k_dense_replace": LAYERS, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2}
CASES = [  # (rope_interleave, q_lora_rank)
    (True, None), (False, None), (True, 16), (False, 16)]
CASE_IDS = [f"interleave={i}-q_lora_rank={q}" for i, q in CASES]


def deepseek_v3(seed: int = 1, randomize=None, **changes) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**{**GEOMETRY, **changes})).eval()
    randomize(model, seed=seed)
    return model


def ids_for(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, GEOMETRY["vocab_size"], (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(params=CASES, ids=CASE_IDS)
def deepseek_v3_dir(request, tmp_path, randomize):
    interleave, q_lora_rank = request.param
    model = deepseek_v3(randomize=randomize, rope_interleave=interleave, q_lora_rank=q_lora_rank)
    directory = tmp_path / "deepseek_v3"
    model.save_pretrained(directory)
    return directory, model


# --- (a) vanilla equals DeepseekV3ForCausalLM -------------------------------------------------

def assert_same_logits(model, reference, record_property) -> None:
    """Our logits equal DeepseekV3's on the same ids (float32, atol 1e-5); the max |Δ| is kept
    as a test property."""
    ids = ids_for()
    with torch.no_grad():
        ours, theirs = model(ids).logits, reference(ids).logits
    delta = (ours - theirs).abs().max().item()
    record_property("max_abs_delta_logit", delta)
    print(f"max |Δ logit| {delta:.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)

def test_vanilla_logits_equal_deepseek_v3(tmp_path, deepseek_v3_dir, record_property):
    src, reference = deepseek_v3_dir
    out = from_deepseek_v3(src, tmp_path / "out", method="vanilla")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, DepthAttnForCausalLM)
    assert model.core_config.attention == "mla"
    assert_same_logits(model, reference, record_property)
    assert model.config.eos_token_id == 2


@pytest.mark.parametrize("absorbed", [False, True], ids=["expanded", "absorbed"])
def test_vanilla_core_model_equals_deepseek_v3(deepseek_v3_dir, absorbed, record_property):
    """The core API (ModelConfig.from_deepseek_v3 + the DeepseekV3 state dict as it is), in
    both forms of MLA attention, on the full sequence and decoding one token at a time with
    the core's latent cache, against DeepseekV3's full forward."""
    from depthattn.io import model_from_state

    _, reference = deepseek_v3_dir
    config = ModelConfig.from_deepseek_v3(reference.config, method="vanilla")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    core = model_from_state(config, state).eval()
    for layer in core.model.layers:
        layer.self_attn.absorbed = absorbed
    ids = ids_for(seed=1)
    with torch.no_grad():
        theirs = reference(ids).logits
        full = core(ids)
        cache = KVCache.for_model(core, *ids.shape)
        steps = torch.cat([core(ids[:, :3], cache=cache)] + [
            core(ids[:, t:t + 1], cache=cache) for t in range(3, ids.shape[1])], dim=1)
    for name, ours in (("full", full), ("cached", steps)):
        delta = (ours - theirs).abs().max().item()
        record_property(f"max_abs_delta_logit_{name}", delta)
        print(f"max |Δ logit| ({name}) {delta:.3e}")
    torch.testing.assert_close(full, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(steps, theirs, rtol=0, atol=1e-5)


def test_the_comparison_sees_a_wrong_rope_layout(deepseek_v3_dir):
    """The equality above can fail: read with rope_interleave flipped, the same weights give
    other logits (so the test checks the layout, it does not pass whatever it is)."""
    from depthattn.io import model_from_state

    _, reference = deepseek_v3_dir
    config = ModelConfig.from_deepseek_v3(reference.config, method="vanilla",
                                          overrides={"rope_interleave":
                                                     not reference.config.rope_interleave})
    core = model_from_state(config, dict(reference.state_dict())).eval()
    ids = ids_for(seed=1)
    with torch.no_grad():
        delta = (core(ids) - reference(ids).logits).abs().max().item()
    assert delta > 1e-3, delta


def test_latent_norm_eps_follows_deepseek_v3(tmp_path, randomize, record_property):
    """DeepseekV3 builds q_a_layernorm and kv_a_layernorm with eps 1e-6 whatever rms_norm_eps
    says (only the block and final norms read it); a large rms_norm_eps shows which eps a
    converted model uses where."""
    reference = deepseek_v3(randomize=randomize, rms_norm_eps=0.5, q_lora_rank=16)
    reference.save_pretrained(tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(
        from_deepseek_v3(tmp_path / "src", tmp_path / "out", method="vanilla")).eval()
    assert_same_logits(model, reference, record_property)


def test_greedy_generation_with_a_cache_equals_deepseek_v3(tmp_path, deepseek_v3_dir,
                                                           record_property):
    """Both models decode with their caches (ours: the latent entries); every step's logits and
    the greedy tokens agree."""
    src, reference = deepseek_v3_dir
    model = AutoModelForCausalLM.from_pretrained(
        from_deepseek_v3(src, tmp_path / "out", method="vanilla")).eval()
    prompt = ids_for(batch=2, length=5, seed=2)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "output_logits": True,
              "return_dict_in_generate": True, "pad_token_id": 0, "eos_token_id": None}
    with torch.no_grad():
        ours = model.generate(prompt, **kwargs)
        theirs = reference.generate(prompt, **kwargs)
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    delta = max((a - b).abs().max().item() for a, b in zip(ours.logits, theirs.logits))
    record_property("max_abs_delta_logit", delta)
    print(f"max |Δ logit| over the decoding steps {delta:.3e}")
    assert delta <= 1e-5


# --- (b) the command's round trip ---------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_cli_round_trip_gives_back_identical_tensors(tmp_path, randomize, tied, capsys):
    reference = deepseek_v3(randomize=randomize, rope_interleave=False, q_lora_rank=16,
                            tie_word_embeddings=tied)
    src = tmp_path / "src"
    reference.save_pretrained(src)
    run_convert(_parse(["--from-deepseek-v3", str(src), "--method", "vanilla",
                        "--out", str(tmp_path / "ours")]))
    run_convert(_parse(["--to-deepseek-v3", str(tmp_path / "ours"),
                        "--out", str(tmp_path / "back")]))
    assert capsys.readouterr().out.count("wrote") == 2
    before, after = load_file(src / "model.safetensors"), load_file(
        tmp_path / "back" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(loaded) is DeepseekV3ForCausalLM
    original = json.loads((src / "config.json").read_text())
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "kv_lora_rank", "q_lora_rank",
                 "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_interleave",
                 "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                 "rope_parameters", "bos_token_id", "eos_token_id", "attention_bias"):
        assert written[name] == original[name], name
    assert written["first_k_dense_replace"] == LAYERS
    assert written["n_routed_experts"] == 0 and written["num_nextn_predict_layers"] == 0
    ids = ids_for(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_depth_attention_from_deepseek_v3(tmp_path, randomize):
    """Depth-Attention retrofitted on the MLA weights: the options travel, no weight changes,
    and the result mixes; a non-vanilla or non-MLA model has no DeepseekV3 folder, nor an MLA
    model a Qwen3 one."""
    reference = deepseek_v3(randomize=randomize)
    src = tmp_path / "src"
    reference.save_pretrained(src)
    run_convert(_parse(["--from-deepseek-v3", str(src), "--stride", "1", "--mla-mix", "values",
                        "--out", str(tmp_path / "da")]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "da").eval()
    core = model.core_config
    assert core.method == "depth_attention"
    assert (core.method_options["stride"], core.method_options["mla_mix"]) == (1, "values")
    assert_retrofit(model, reference, ids_for())
    with pytest.raises(ValueError, match=r"runs method 'depth_attention'; only 'vanilla'.*"
                                         r"--to-deepseek-v3"):
        run_convert(_parse(["--to-deepseek-v3", str(tmp_path / "da"),
                            "--out", str(tmp_path / "x")]))
    vanilla = from_deepseek_v3(src, tmp_path / "vanilla", method="vanilla")
    with pytest.raises(ValueError, match=r"attention \('mla'\) has no Qwen3Config"):
        to_qwen3(vanilla, tmp_path / "x")
    with pytest.raises(ValueError, match=r"--mla-mix applies to --from-deepseek-v3 only"):
        run_convert(_parse(["--from-qwen3", str(src), "--mla-mix", "latent",
                            "--out", str(tmp_path / "x")]))
    with pytest.raises(ValueError, match=r"--mla-mix only applies to --from-qwen3 or "
                                         r"--from-deepseek-v3"):
        run_convert(_parse(["--to-deepseek-v3", str(vanilla), "--mla-mix", "latent",
                            "--out", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()


def test_a_gqa_model_has_no_deepseek_v3_folder(tmp_path, make_model):
    ours = DepthAttnForCausalLM.from_core(make_model())
    ours.save_pretrained(tmp_path / "gqa")
    with pytest.raises(ValueError, match=r"attention \('gqa'\) has no DeepseekV3Config"):
        to_deepseek_v3(tmp_path / "gqa", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_multi_token_prediction_layers_are_dropped(tmp_path, randomize, caplog):
    """A checkpoint's MTP module (stored as layer num_layers) serves speculative decoding only:
    it is dropped, with a warning, and the logits are the model's."""
    reference = deepseek_v3(randomize=randomize)
    src = tmp_path / "src"
    reference.save_pretrained(src)
    state = load_file(src / "model.safetensors")
    state[f"model.layers.{LAYERS}.enorm.weight"] = torch.ones(GEOMETRY["hidden_size"])
    state[f"model.layers.{LAYERS}.eh_proj.weight"] = torch.zeros(64, 128)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="depthattn.io"):
        core = load_model(src).eval()
    assert f"layer(s) {LAYERS}" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(core(ids_for()), reference(ids_for()).logits,
                                   rtol=0, atol=1e-5)


# --- (c) what is refused, by name --------------------------------------------------------------
YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 16,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
        "rope_theta": 10000.0}
REFUSED = {
    "moe": ({"first_k_dense_replace": 1},
            r"first_k_dense_replace \(1\).*mixture-of-experts"),
    "moe_default": ({"first_k_dense_replace": None}, r"first_k_dense_replace \(None\)"),
    "yarn": ({"rope_parameters": YARN}, r"rope_type \('yarn'\).*mscale_all_dim"),
    "linear": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                    "rope_theta": 10000.0}}, r"rope_type \('linear'\)"),
    "partial": ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                     "partial_rotary_factor": 0.5}},
                r"partial_rotary_factor \(0.5\)"),
    "attention_bias": ({"attention_bias": True}, r"attention_bias \(True\)"),
    "gqa": ({"num_key_value_heads": 2}, r"num_key_value_heads \(2\).*num_attention_heads"),
    "hidden_act": ({"hidden_act": "gelu"}, r"hidden_act \('gelu'\)"),
    "attention_dropout": ({"attention_dropout": 0.1}, r"attention_dropout \(0.1\)"),
}


@pytest.mark.parametrize("change,message", REFUSED.values(), ids=REFUSED.keys())
def test_refusals_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_deepseek_v3(DeepseekV3Config(**{**GEOMETRY, **change}))
    with pytest.raises(ValueError, match=message):  # a config.json as it is, too
        fields_from_deepseek_v3({**DeepseekV3Config(**GEOMETRY).to_dict(), **change})


def test_a_folder_is_refused_before_anything_is_written(tmp_path, randomize):
    reference = deepseek_v3(randomize=randomize)
    src = tmp_path / "src"
    reference.save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    weird = tmp_path / "weird"
    weird.mkdir()
    for change, message in [
            ({"first_k_dense_replace": 1}, "mixture-of-experts"),
            ({"rope_scaling": YARN, "rope_parameters": None}, r"rope_type \('yarn'\)"),
            ({"quantization_config": {"quant_method": "fp8"}}, r"quantization_config \('fp8'\)"),
            ({"model_type": "qwen3"}, (r"'qwen3' model; --from-deepseek-v3 needs model_type "
                                       r"'deepseek_v3' \(use --from-qwen3\)"))]:
        (weird / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            from_deepseek_v3(weird, tmp_path / "x")
    with pytest.raises(ValueError, match=r"'deepseek_v3' model; --from-qwen3 needs model_type "
                                         r"'qwen3' \(use --from-deepseek-v3\)"):
        from_qwen3(src, tmp_path / "x")
    assert not (tmp_path / "x").exists()
