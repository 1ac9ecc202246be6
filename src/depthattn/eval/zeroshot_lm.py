"""An lm-eval `LM` over our CausalLM and a tokenizer (registered as "depthattn").

lm-eval asks three things of a model; each request is a (context, continuation) string pair:
  loglikelihood          log p(continuation | context) and whether greedy decoding would
                         produce it (is_greedy), for multiple choice and LAMBADA accuracy
  loglikelihood_rolling  log p(text) over windows of max_seq_len, for perplexity tasks
  generate_until         greedy continuation, for generative tasks (none of the paper's)

Notation:  B | batch size    T | padded length    V | vocabulary    C | continuation length
"""

from __future__ import annotations

import logging

import lm_eval.models  # noqa: F401  before register_model below: see the note at the class
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from depthattn.data.tokenizer import check_vocab_fits
from depthattn.model.decoder import CausalLM
from depthattn.model.generate import generate
from depthattn.utils.devices import resolve_device, resolve_dtype
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)


# lm-eval fills its model registry from lm_eval.models (hf, vllm, ...) only while the registry is
# empty; registering ours first would leave "hf" unknown in this process, hence the import above.
@register_model("depthattn")
class DepthAttnLM(TemplateLM):
    """Scores text with a depthattn CausalLM.

    Contexts longer than the model's max_seq_len are truncated from the left. Every text starts
    with the tokenizer's BOS token when it has one (our BPE's BOS is the EOS that separates
    documents in training, so a prompt looks like the start of a document); a tokenizer without
    one (Qwen3's) adds nothing. The model is moved to `device` and `dtype` in place.
    """

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 max_seq_len: int | None = None, add_bos_token: bool = True) -> None:
        super().__init__()
        check_vocab_fits(len(tokenizer), model.config.vocab_size)
        if int(batch_size) < 1:
            raise DepthAttnError(f"batch_size ({batch_size}) must be >= 1")
        self._device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self._device)
        self.model = model.to(device=self._device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_seq_len = int(max_seq_len or model.config.max_seq_len)
        if self.max_seq_len > model.config.max_seq_len:
            raise DepthAttnError(f"max_seq_len ({self.max_seq_len}) exceeds the model's "
                                 f"({model.config.max_seq_len})")
        bos = tokenizer.bos_token_id if add_bos_token else None
        self.bos_token_id = None if bos is None else int(bos)
        if tokenizer.eos_token_id is None:
            raise DepthAttnError("the tokenizer has no EOS token: lm-eval conditions empty contexts "
                                 "on it; set eos_token in its tokenizer_config.json")

    # --- tokenization (TemplateLM does the context/continuation split) ------------------------

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        return self.eot_token_id if self.bos_token_id is None else self.bos_token_id

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        if add_special_tokens is not False and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """log p(cont | ctx) and is_greedy for token pairs, `batch_size` at a time.

        The model reads (ctx + cont)[:-1], truncated from the left to max_seq_len; the logits at
        the last C positions predict the C continuation tokens. Rows are right-padded and no
        mask is passed: with causal attention, padding after a row's tokens cannot change them.
        """
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        # Longest first: similar lengths share a batch, and a memory error shows up at once.
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in tqdm(range(0, len(order), self.batch_size), desc="loglikelihood",
                          disable=len(order) <= self.batch_size, leave=False):
            rows = order[start:start + self.batch_size]
            inputs, conts = [], []
            for i in rows:
                ctx, cont = pairs[i]
                if not cont:
                    raise DepthAttnError("an empty continuation cannot be scored")
                if len(cont) > self.max_seq_len:
                    raise DepthAttnError(f"a continuation of {len(cont)} tokens does not fit "
                                         f"max_seq_len ({self.max_seq_len})")
                inputs.append((ctx + cont)[-(self.max_seq_len + 1):-1])
                conts.append(cont)
            T = max(len(x) for x in inputs)
            ids = torch.zeros(len(rows), T, dtype=torch.long)
            for b, x in enumerate(inputs):
                ids[b, :len(x)] = torch.tensor(x)
            logits = self.model(ids.to(self._device))  # (B, T, V)
            for b, (i, x, cont) in enumerate(zip(rows, inputs, conts)):
                C = len(cont)
                logprobs = F.log_softmax(logits[b, len(x) - C:len(x)].float(), dim=-1)  # (C, V)
                target = torch.tensor(cont, device=logprobs.device)
                total = logprobs.gather(-1, target[:, None]).sum()
                greedy = bool((logprobs.argmax(-1) == target).all())
                out[i] = (float(total), greedy)
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (strings, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log p over every token of each text, in disjoint windows of max_seq_len that
        each condition on as much preceding text as fits (lm-eval's rolling scheme)."""
        results = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text, add_special_tokens=False), self.prefix_token_id,
                self.max_seq_len, context_len=1)]
            total = sum(logp for logp, _ in self._score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding with our KV cache, one request at a time, cut at the first `until`."""
        results = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", 256))
            if gen_kwargs.pop("do_sample", False) or gen_kwargs.get("temperature", 0) > 0:
                raise DepthAttnError("depthattn's lm-eval model decodes greedily only")
            max_new = min(max_new, self.max_seq_len - 1)
            prompt = self.tok_encode(context)[-(self.max_seq_len - max_new):]
            ids = torch.tensor([prompt], device=self._device)
            out = generate(self.model, ids, max_new_tokens=max_new,
                           eos_token_id=self.eot_token_id)
            new = out[0, len(prompt):].tolist()
            if self.eot_token_id in new:  # generate pads finished rows with EOS
                new = new[:new.index(self.eot_token_id)]
            text = self.tok_decode(new)
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
            results.append(text)
        return results
