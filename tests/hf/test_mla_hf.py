"""Multi-head latent attention through the Hugging Face layer (docs/method.md §9): transformers'
``generate`` with its dynamic and static caches gives the full forward's greedy continuation and
scores, under eager and SDPA attention, for vanilla MLA and every rule; eager returns one map
per layer; a saved folder loads back through ``AutoModelForCausalLM`` with the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthattn.hf import DepthAttnForCausalLM
from depthattn.hf.configuration import DepthAttnConfig
from depthattn.model.config import ModelConfig
from tests.conftest import randomize_

RULES = [("vanilla", {}), ("depth_attention", {}), ("depth_attention", {"mla_mix": "values"}),
         ("value_residual", {"mode": "learned"})]
MLA = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=4, num_heads=4,
           num_kv_heads=4, attention="mla", kv_lora_rank=12, q_lora_rank=10,
           qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=10, max_seq_len=64)


def mla_hf_model(method: str, options: dict, attn: str) -> DepthAttnForCausalLM:
    core = ModelConfig(**MLA, method=method, method_options=options)
    config = DepthAttnConfig.from_model_config(core, pad_token_id=0)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return randomize_(DepthAttnForCausalLM(config), seed=3).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method, options", RULES)
def test_generate_with_both_caches_equals_the_full_forward(method, options, attn):
    model = mla_hf_model(method, options, attn)
    ids = torch.randint(1, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    runs = {cache: model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  cache_implementation=cache, output_scores=True,
                                  return_dict_in_generate=True)
            for cache in (None, "static")}
    sequences = runs[None].sequences
    assert torch.equal(runs["static"].sequences, sequences)
    with torch.no_grad():
        full = model(sequences, attention_mask=torch.cat([mask, torch.ones(2, 5, dtype=torch.long)],
                                                         1)).logits
    for cache, run in runs.items():
        torch.testing.assert_close(torch.stack(run.scores, 1), full[:, 5:-1], rtol=0, atol=1e-5,
                                   msg=f"cache {cache}")


def test_a_static_cache_built_by_hand_holds_the_latent_entry():
    from depthattn.hf.cache import DepthAttnStaticCache

    model = mla_hf_model("depth_attention", {"mla_mix": "values"}, "sdpa")
    ids = torch.randint(1, 97, (2, 6))
    cache = DepthAttnStaticCache(model.core_config, 8)
    with torch.no_grad():
        cached = model(ids, past_key_values=cache, use_cache=True).logits
        full = model(ids).logits
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert cache.inner.keys[0].shape == (2, 1, 8, 12 + 4)
    assert cache.inner.values[0].shape == (2, 1, 8, 12)  # c̃, the values rule


def test_eager_attention_returns_one_map_per_layer():
    model = mla_hf_model("depth_attention", {}, "eager")
    out = model(torch.randint(1, 97, (1, 5)), output_attentions=True)
    assert len(out.attentions) == 4 and out.attentions[0].shape == (1, 4, 5, 5)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 4, 5))


def test_a_saved_mla_folder_loads_through_auto(tmp_path):
    model = mla_hf_model("depth_attention", {"mla_mix": "values"}, "sdpa")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.attention == "mla" and loaded.core_config.latent_values_cached
    ids = torch.randint(1, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_an_mla_model_takes_deepseek_v3s_tensor_parallel_plan():
    """DeepseekV3's attention and dense-MLP rules (transformers 5.25's; 5.19's config lists its
    MLP rules only), with the query projection this model has."""
    import fnmatch

    model = mla_hf_model("vanilla", {}, "sdpa")  # with a query rank: q_b_proj, no q_proj
    plan = model.config.base_model_tp_plan
    assert plan == {"layers.*.self_attn.q_b_proj": "colwise",
                    "layers.*.self_attn.kv_a_proj_with_mqa": "mla_kv_a_proj",
                    "layers.*.self_attn.kv_b_proj": "colwise",
                    "layers.*.self_attn.o_proj": "rowwise",
                    "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise",
                    "layers.*.mlp.down_proj": "rowwise"}
    names = [n.removeprefix("model.").removesuffix(".weight") for n, _ in model.named_parameters()]
    for pattern in plan:  # every rule names modules this model has
        assert fnmatch.filter(names, pattern), pattern
