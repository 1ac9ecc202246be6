"""DepthAttnLM against direct computations with the model."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from depthattn.eval.zeroshot_lm import DepthAttnLM
from tests.conftest import tiny_model


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _direct_logprob(model, ids: list[int], n_cont: int) -> float:
    """log p of the last n_cont tokens of ids given the rest, one unbatched float64 forward."""
    with torch.no_grad():
        logits = model.double()(torch.tensor([ids[:-1]]))[0]
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    return float(logprobs[-n_cont:].gather(-1, targets[-n_cont:, None]).sum())


def test_loglikelihood_matches_direct_computation(model, tokenizer):
    lm = DepthAttnLM(model, tokenizer, batch_size=2, dtype="float32")
    pairs = [("The king speaks to the queen", " of love"), ("Thou art", " fair"),
             ("Hamlet, Romeo and Juliet go to the sea", " tonight!"), ("", "Good night")]
    results = lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    reference = tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=96)
    bos = tokenizer.bos_token_id
    for (context, continuation), (logprob, _) in zip(pairs, results):
        ctx = [bos] + tokenizer.encode(context)
        whole = [bos] + tokenizer.encode(context + continuation)
        assert whole[:len(ctx)] == ctx  # the split TemplateLM makes is at a token boundary here
        expected = _direct_logprob(reference, whole, len(whole) - len(ctx))
        assert logprob == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_is_greedy_follows_the_argmax(model, tokenizer):
    lm = DepthAttnLM(model, tokenizer, batch_size=4, dtype="float32")
    context = [tokenizer.bos_token_id] + tokenizer.encode("The king")
    with torch.no_grad():
        best = int(model(torch.tensor([context]))[0, -1].argmax())
    other = (best + 1) % len(tokenizer)
    greedy, not_greedy = lm._loglikelihood_tokens([(("", ""), context, [best]),
                                                   (("", ""), context, [other])])
    assert greedy[1] and not not_greedy[1]
    assert greedy[0] > not_greedy[0]


def test_long_context_is_truncated_from_the_left(tokenizer):
    model = tiny_model(seed=1, vocab_size=len(tokenizer), max_seq_len=16)
    lm = DepthAttnLM(model, tokenizer, batch_size=1, dtype="float32")
    ctx, cont = list(range(5, 45)), [7, 8, 9]
    (logprob, _), = lm._loglikelihood_tokens([(("", ""), ctx, cont)])
    kept = (ctx + cont)[-17:]  # 16 inputs + the last target
    assert logprob == pytest.approx(_direct_logprob(tiny_model(seed=1, vocab_size=len(tokenizer),
                                                               max_seq_len=16), kept, 3), rel=1e-4)


def test_rolling_loglikelihood_covers_every_token_once(tokenizer):
    model = tiny_model(seed=2, vocab_size=len(tokenizer), max_seq_len=16)
    lm = DepthAttnLM(model, tokenizer, batch_size=3, dtype="float32")
    text = "The king and the queen speak of love and death by the sea."
    ids = tokenizer.encode(text)
    assert 16 < len(ids) <= 32  # exactly two windows
    (total,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]),
                                        disable_tqdm=True)
    # Window 1: BOS + the first 15 tokens predict tokens 0..15. Window 2 predicts the rest,
    # reading the 16 tokens before the last one (the fullest context that fits).
    reference = tiny_model(seed=2, vocab_size=len(tokenizer), max_seq_len=16)
    expected = (_direct_logprob(reference, [tokenizer.bos_token_id] + ids[:16], 16)
                + _direct_logprob(reference, ids[-17:], len(ids) - 16))
    assert total == pytest.approx(expected, rel=1e-4)


def test_generate_until_is_greedy_and_stops(model, tokenizer):
    lm = DepthAttnLM(model, tokenizer, batch_size=1, dtype="float32")
    (text,) = lm.generate_until(_requests("generate_until", [("The king", {"max_gen_toks": 5})]),
                                disable_tqdm=True)
    ids = [tokenizer.bos_token_id] + tokenizer.encode("The king")
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    expected = tokenizer.decode(ids[-5:]).split(tokenizer.eos_token)[0]
    assert text == expected


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tokenizer):
    small = tiny_model(seed=0, vocab_size=len(tokenizer) - 10)
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        DepthAttnLM(small, tokenizer)


def test_registering_ours_keeps_lm_evals_own_models():
    """lm-eval fills its model registry only while it is empty: after importing our module,
    "hf" must still resolve (a fresh interpreter, so nothing else has filled it first)."""
    import subprocess
    import sys

    code = ("import depthattn.eval.zeroshot_lm\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('depthattn').__name__, get_model('hf').__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["DepthAttnLM", "HFLM"]
