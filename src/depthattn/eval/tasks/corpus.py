"""Zero-shot tasks built from held-out corpus documents, for models too small for the paper's.

Both read the *validation* split of a prepared folder (documents the model never trained on),
decoded back to text (our tokenizers round-trip exactly), and are written as local JSONL plus
lm-eval task YAMLs; the same folder and seed always give the same files.

corpus_cloze          LAMBADA-style: `context_words` words of text, predict the next word
                      (scored like lambada_openai: accuracy = greedy, and perplexity). Only
                      targets of 4+ letters that already occur in the context are used, as in
                      LAMBADA most targets do: a model that reads its context can get them.
corpus_continuation   "which continuation is real": `context_words` words, then 4 choices of
                      `continuation_words` words: the true continuation and 3 spans from other
                      validation documents (acc and acc_norm, like HellaSwag).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

from depthattn.data.prepared import cache_dir, manifest_path, sha256_text
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import load_tokenizer
from depthattn.utils.atomic import write_text_atomic
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file

CORPUS_TASKS = ("corpus_cloze", "corpus_continuation")
FORMAT_VERSION = 1
_WORD = re.compile(r"\S+")
_TARGET = re.compile(r"[A-Za-z]{4,}")


def validation_documents(prepared: str | Path) -> list[str]:
    """The validation documents of a prepared folder, as text."""
    stream = TokenStream(prepared, "validation")
    tokenizer = load_tokenizer(stream.tokenizer_path)
    ids = stream.read(0, len(stream))
    cuts = np.flatnonzero(ids == stream.eos_token_id)
    pieces = np.split(ids, cuts)
    docs = [tokenizer.decode(p[p != stream.eos_token_id].tolist()) for p in pieces]
    return [d for d in docs if d.strip()]


def cloze_items(docs: list[str], n: int, context_words: int, seed: int) -> list[dict]:
    candidates = []  # (doc, word index) of usable targets
    for d, text in enumerate(docs):
        words = list(_WORD.finditer(text))
        for k in range(context_words, len(words)):
            w = words[k]
            context = text[words[k - context_words].start():w.start()]
            if (_TARGET.fullmatch(w.group()) and text[w.start() - 1] == " "
                    and w.group().lower() in context.lower()):
                candidates.append((d, k))
    rng = random.Random(seed)
    picked = sorted(rng.sample(candidates, min(n, len(candidates))))
    items = []
    for d, k in picked:
        text, words = docs[d], list(_WORD.finditer(docs[d]))
        context = text[words[k - context_words].start():words[k].start() - 1]
        items.append({"context": context, "target": words[k].group()})
    return items


def continuation_items(docs: list[str], n: int, context_words: int, continuation_words: int,
                       seed: int, choices: int = 4) -> list[dict]:
    spans = [list(_WORD.finditer(text)) for text in docs]
    length = context_words + continuation_words
    usable = [d for d, words in enumerate(spans) if len(words) >= length]
    if len(usable) < 2:
        raise DepthAttnError("corpus_continuation needs at least 2 validation documents of "
                             f"{length}+ words; the corpus has {len(usable)}")
    rng = random.Random(seed)

    def span(d: int, k: int, count: int) -> str:
        words = spans[d]
        return docs[d][words[k].start():words[k + count - 1].end()]

    items = []
    for _ in range(n):
        d = rng.choice(usable)
        k = rng.randrange(len(spans[d]) - length + 1)
        real = span(d, k + context_words, continuation_words)
        distractors = []
        while len(distractors) < choices - 1:
            e = rng.choice(usable)
            if e == d:
                continue
            distractors.append(span(e, rng.randrange(len(spans[e]) - continuation_words + 1),
                                    continuation_words))
        label = rng.randrange(choices)
        options = distractors[:label] + [real] + distractors[label:]
        items.append({"context": span(d, k, context_words), "choices": options, "label": label})
    return items


# Both tasks read one local JSONL file as their validation split.
_LOCAL_JSON = """dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
"""

_CLOZE_YAML = "task: corpus_cloze\n" + _LOCAL_JSON + """output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""

_CONTINUATION_YAML = "task: corpus_continuation\n" + _LOCAL_JSON + """output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""


def ensure_corpus_tasks(prepared: str | Path, n: int = 500, seed: int = 0,
                        context_words: int = 48, continuation_words: int = 12,
                        root: Path | None = None) -> Path:
    """The folder holding corpus_cloze / corpus_continuation (JSONL + YAML) for `prepared`,
    built on first use; keyed by the manifest's content and every option."""
    manifest = manifest_path(prepared)
    key = sha256_text(json.dumps([sha256_file(manifest), n, seed, context_words,
                                  continuation_words, FORMAT_VERSION]))[:16]
    out = (root or cache_dir() / "zeroshot" / "corpus") / key
    if (out / "corpus_continuation.yaml").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    docs = validation_documents(manifest)
    written = {
        "corpus_cloze": cloze_items(docs, n, context_words, seed),
        "corpus_continuation": continuation_items(docs, n, context_words, continuation_words,
                                                  seed),
    }
    for name, template in (("corpus_cloze", _CLOZE_YAML),
                           ("corpus_continuation", _CONTINUATION_YAML)):
        if not written[name]:
            raise DepthAttnError(f"{manifest}: the validation split yields no {name} items")
        data = out / f"{name}.jsonl"
        write_text_atomic(data, "".join(json.dumps(item) + "\n" for item in written[name]))
        write_text_atomic(out / f"{name}.yaml", template.format(data=json.dumps(str(data)),
                                                     version=FORMAT_VERSION))
    return out
