"""Qwen3 checkpoints written by transformers itself ↔ depthattn (depthattn.hf.convert), and the
`depthattn convert` command on them."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from depthattn.cli.convert import add_convert_arguments, run_convert
from depthattn.hf import DepthAttnForCausalLM
from depthattn.hf.convert import from_qwen3, to_qwen3
from tests.hf.retrofit import assert_retrofit


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def qwen3_dir(request, tmp_path, randomize):
    config = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=80,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
                         tie_word_embeddings=request.param, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    randomize(model, seed=1)
    directory = tmp_path / "qwen3"
    model.save_pretrained(directory)
    return directory, model


def ids_for(vocab=96, seed=0):
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(seed))


def test_from_qwen3_vanilla_gives_equal_logits(tmp_path, qwen3_dir):
    src, reference = qwen3_dir
    out = from_qwen3(src, tmp_path / "out", method="vanilla")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, DepthAttnForCausalLM)
    ids = ids_for()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)
    assert model.config.eos_token_id == 2


def test_from_qwen3_depth_attention_loads_unchanged_weights(tmp_path, qwen3_dir):
    src, reference = qwen3_dir
    out = from_qwen3(src, tmp_path / "out", method="depth_attention", stride=2,
                     recent_window=1)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.core_config.method == "depth_attention"
    assert model.core_config.method_options == {"stride": 2, "recent_window": 1,
                                                 "sources": "applications"}
    assert_retrofit(model, reference, ids_for())


def test_to_qwen3_round_trip(tmp_path, qwen3_dir):
    src, reference = qwen3_dir
    ours = from_qwen3(src, tmp_path / "ours", method="vanilla")
    back = to_qwen3(ours, tmp_path / "back")
    loaded = Qwen3ForCausalLM.from_pretrained(back).eval()
    ids = ids_for(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert loaded.config.tie_word_embeddings == reference.config.tie_word_embeddings


def test_to_qwen3_refuses_other_methods(tmp_path, qwen3_dir, make_model):
    src, _ = qwen3_dir
    ours = from_qwen3(src, tmp_path / "ours", method="depth_attention")
    with pytest.raises(ValueError, match="only 'vanilla'"):
        to_qwen3(ours, tmp_path / "back")
    after = DepthAttnForCausalLM.from_core(make_model(k_norm_position="after_rope"))
    after.save_pretrained(tmp_path / "after")
    with pytest.raises(ValueError, match="k_norm_position"):
        to_qwen3(tmp_path / "after", tmp_path / "back2")


def test_bad_inputs(tmp_path, qwen3_dir):
    src, _ = qwen3_dir
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_qwen3(tmp_path, tmp_path / "x")  # a folder that is not a checkpoint
    with pytest.raises(FileNotFoundError, match="not a directory"):
        from_qwen3(tmp_path / "missing", tmp_path / "x")
    with pytest.raises(ValueError, match="adds parameters"):
        from_qwen3(src, tmp_path / "x", method="mhc")
    with pytest.raises(ValueError, match="stride"):
        from_qwen3(src, tmp_path / "x", method="depth_attention", stride=0)
    weird = tmp_path / "weird"
    weird.mkdir()
    config = json.loads((src / "config.json").read_text())
    (weird / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ValueError, match="attention_bias"):
        from_qwen3(weird, tmp_path / "x")
    (weird / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'"):
        from_qwen3(weird, tmp_path / "x")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_qwen3(no_weights, tmp_path / "x")


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_convert_cli(tmp_path, qwen3_dir, capsys):
    src, _ = qwen3_dir
    args = _parse(add_convert_arguments, ["--from-qwen3", str(src), "--stride", "2",
                                          "--out", str(tmp_path / "out")])
    run_convert(args)
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["method"], config["method_options"]["stride"]) == ("depth_attention", 2)
    with pytest.raises(ValueError, match="not empty"):
        run_convert(args)
    with pytest.raises(ValueError, match="only applies to --from-qwen3"):
        run_convert(_parse(add_convert_arguments, ["--to-qwen3", str(tmp_path / "out"),
                                                   "--stride", "2", "--out",
                                                   str(tmp_path / "o2")]))


def test_a_looped_reading_of_qwen3_weights(tmp_path, qwen3_dir, capsys):
    """prelude 1, block of 2, coda 1: at r = 1 the Qwen3 model itself; deeper, the same weights
    applied more often; the loop geometry travels in the folder's config."""
    src, reference = qwen3_dir
    ids = ids_for()
    looped = {"prelude_layers": 1, "loop_layers": 2}
    out = from_qwen3(src, tmp_path / "r1", method="vanilla", overrides=looped)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)
    run_convert(_parse(add_convert_arguments, [
        "--from-qwen3", str(src), "--sources", "recurrent", "prelude_layers=1", "loop_layers=2",
        "loop_iterations=3", "loop_injection=add", "--out", str(tmp_path / "r3")]))
    deep = AutoModelForCausalLM.from_pretrained(tmp_path / "r3").eval()
    core = deep.core_config
    assert (core.prelude_layers, core.loop_layers, core.loop_iterations, core.num_applications) \
        == (1, 2, 3, 8)
    assert core.method_options["sources"] == "recurrent"
    ref_state = reference.state_dict()
    for name, tensor in deep.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name
    with pytest.raises(ValueError, match=r"loop_injection 'concat' adds an adapter"):
        from_qwen3(src, tmp_path / "c", overrides={**looped, "loop_injection": "concat"})
    with pytest.raises(ValueError, match=r"method cannot be a model override"):
        from_qwen3(src, tmp_path / "m", overrides={"method": "vanilla"})
    with pytest.raises(ValueError, match=r"model overrides \(loop_layers=2\) only apply to "
                                         r"--from-qwen3"):
        run_convert(_parse(add_convert_arguments, ["--to-qwen3", str(out), "loop_layers=2",
                                                   "--out", str(tmp_path / "q")]))
    with pytest.raises(ValueError, match=r"a looped model \(loop_layers=2\) has no Qwen3Config"):
        to_qwen3(out, tmp_path / "back")
    assert not any((tmp_path / name).exists() for name in ("c", "m", "q", "back"))
