"""The Hugging Face wrapper: same modules as the core, Qwen3 names, Auto classes round trip."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from depthattn.hf import DepthAttnConfig, DepthAttnForCausalLM

METHODS = [
    dict(method="vanilla"),
    dict(method="depth_attention", method_options={"stride": 2, "recent_window": 1},
         k_norm_position="after_rope"),
    dict(method="vanilla", tie_embeddings=True),
    dict(method="mhc"),  # a method with parameters of its own
]


def hf_from_core(make_model, seed=0, **overrides) -> tuple:
    core = make_model(seed=seed, **overrides)
    return core, DepthAttnForCausalLM.from_core(core).eval()


def test_config_round_trips_model_config(make_config):
    core = make_config(method="depth_attention", method_options={"recent_window": 1},
                       k_norm_position="after_rope")
    hf = DepthAttnConfig.from_model_config(core)
    assert hf.to_model_config() == core
    assert hf.method_options == {"stride": 3, "recent_window": 1,
                                 "sources": "applications"}  # resolved: L // 2
    assert (hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads) == (6, 4, 2)
    assert hf.max_position_embeddings == core.max_seq_len


def test_loss_backpropagates_into_the_core_parameters(make_model, make_ids):
    _, hf = hf_from_core(make_model, method="depth_attention")
    hf.train()
    ids = make_ids(2, 6)
    hf(ids, labels=ids).loss.backward()
    assert hf.lm_head.weight.grad is not None
    assert hf.model.layers[0].self_attn.k_norm.weight.grad.abs().sum() > 0


def test_config_validates_with_core_messages():
    with pytest.raises(ValueError, match="must be divisible by num_kv_heads"):
        DepthAttnConfig(num_heads=4, num_kv_heads=3, hidden_size=64, head_dim=16)
    with pytest.raises(ValueError, match="unknown option"):
        DepthAttnConfig(method="depth_attention", method_options={"strid": 2})
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        DepthAttnConfig(tie_word_embeddings=True, tie_embeddings=False)


def test_wraps_the_core_modules_and_keeps_qwen3_names(make_model, make_ids):
    core, hf = hf_from_core(make_model, method="depth_attention")
    assert hf.model.decoder is core.model and hf.lm_head is core.lm_head  # no second copy
    assert hf.model.layers is core.model.layers  # one module dict: the same modules
    assert list(hf.state_dict()) == list(core.state_dict())
    assert "model.embed_tokens.weight" in hf.state_dict()
    assert "model.layers.0.self_attn.q_proj.weight" in hf.state_dict()
    ids = make_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, core(ids), rtol=0, atol=0)


def test_loss_is_shifted_cross_entropy(make_model, make_ids):
    core, hf = hf_from_core(make_model, method="depth_attention")
    ids = make_ids(2, 9)
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = hf(ids, labels=labels)
        logits = core(ids)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("overrides", METHODS)
def test_auto_classes_round_trip(tmp_path, make_model, make_ids, overrides):
    _, hf = hf_from_core(make_model, seed=2, **overrides)
    hf.generation_config.eos_token_id = 3
    ids = make_ids(2, 8, seed=1)
    with torch.no_grad():
        expected = hf(ids).logits
    hf.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "depthattn"

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, DepthAttnConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no trust_remote_code
    assert isinstance(loaded, DepthAttnForCausalLM)
    assert loaded.core_config == hf.core_config
    assert loaded.generation_config.eos_token_id == 3
    if hf.core_config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)


def test_fresh_model_is_initialised_like_the_core(make_config):
    torch.manual_seed(0)
    model = DepthAttnForCausalLM(DepthAttnConfig.from_model_config(make_config(init_std=0.02)))
    w = model.model.layers[0].self_attn.q_proj.weight
    assert 0.01 < float(w.detach().std()) < 0.03
    assert torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(64))


def test_kv_cache_through_forward(make_model, make_ids):
    from depthattn import KVCache

    _, hf = hf_from_core(make_model, method="depth_attention")
    ids = make_ids(1, 6)
    cache = KVCache.for_model(hf.core(), 1, 6)
    with torch.no_grad():
        full = hf(ids).logits
        first = hf(ids[:, :4], past_key_values=cache).logits
        rest = [hf(ids[:, t:t + 1], past_key_values=cache).logits for t in (4, 5)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_foreign_cache_is_refused(make_model, make_ids):
    from transformers import DynamicCache

    _, hf = hf_from_core(make_model)
    with pytest.raises(ValueError, match="DepthAttnCache"):
        hf(make_ids(1, 3), past_key_values=DynamicCache())


def test_export_run_directory(tmp_path, make_model, make_ids):
    """A run directory (run_dir/model + train_config.json pointing at prepared data) exports
    with the tokenizer recorded in the data manifest."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from depthattn import save_model
    from depthattn.data.tokenizer import save_tokenizer, wrap_tokenizer
    from depthattn.hf.export import export_run

    vocab = {f"w{i}": i for i in range(100)}
    vocab["[UNK]"] = 100
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    data = tmp_path / "data"
    save_tokenizer(wrap_tokenizer(backend), data / "tokenizer")
    (data / "manifest.json").write_text(json.dumps({"tokenizer": {"path": "tokenizer"}}))
    run = tmp_path / "run"
    core = make_model(seed=4, method="depth_attention")
    save_model(core, run / "model")
    (run / "train_config.json").write_text(json.dumps({"data": str(data)}))

    out = export_run(run, tmp_path / "hf")
    import argparse

    from depthattn.cli.convert import add_convert_arguments, run_convert

    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    run_convert(parser.parse_args(["--from-run", str(run), "--out", str(tmp_path / "cli")]))
    assert (tmp_path / "cli" / "tokenizer.json").is_file()
    assert (out / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert loaded.config.eos_token_id == tok.eos_token_id
    ids = make_ids(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, core(ids), rtol=0, atol=0)


def test_import_depthattn_registers_auto_classes_cheaply(tmp_path, make_model):
    """In a fresh interpreter: `import depthattn` loads no transformers modeling code, yet
    AutoModelForCausalLM / AutoConfig / AutoTokenizer resolve our model type afterwards."""
    import subprocess
    import sys

    DepthAttnForCausalLM.from_core(make_model(seed=1)).save_pretrained(tmp_path)
    script = f"""
import sys
import depthattn
assert "transformers.modeling_utils" not in sys.modules, "import depthattn got expensive"
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
assert type(model).__name__ == "DepthAttnForCausalLM", type(model)
assert type(model.config) in TOKENIZER_MAPPING
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
