"""Byte-level BPE tokenizer: trained on the corpus, saved as a Hugging Face tokenizer folder,
hashed for manifests; any local fast (tokenizer.json) Hugging Face tokenizer is accepted instead."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from depthattn.data.defaults import DEFAULT_VOCAB_SIZE
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"  # separates documents in the packed token stream (GPT-2's name)
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
# Byte-level BPE starts from all 256 byte symbols, plus the special tokens; merges come on top.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 2**32  # token ids are stored as uint32 at most


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise DepthAttnError(
            f"vocab_size {vocab_size} is out of range: a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens) and at most "
            f"{MAX_VOCAB_SIZE}")


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
              min_frequency: int = 2, progress: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style: no normaliser, no prefix space) on `texts`;
    `progress` shows the tokenizers library's own bars (pre-processing, pair counts, merges)."""
    check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    # No prefix space, so decode(encode(text)) == text exactly, which shard tests rely on.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte gets a token even if the corpus lacks it, so no text is ever unencodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() < vocab_size:
        logger.warning("the corpus supports only %d tokens; asked for vocab_size %d",
                       backend.get_vocab_size(), vocab_size)
    return wrap_tokenizer(backend)


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,  # as GPT-2: one token marks both ends of a document
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # keep decode() an exact inverse of encode()
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Write a Hugging Face tokenizer folder; returns the path of its tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder / "tokenizer.json"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a tokenizer.json file or a local Hugging Face tokenizer folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer not found: {path} (give a tokenizer.json file or a local Hugging Face "
            f"tokenizer folder)")
    if path.is_file():
        return wrap_tokenizer(Tokenizer.from_file(str(path)))
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def backend_json(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer.json text that defines the token ids; fast tokenizers only."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DepthAttnError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; packing needs one with a "
            f"tokenizer.json (save it with a recent transformers to get one)")
    return backend.to_str()


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the canonical tokenizer.json: same ids, same hash (padding and truncation,
    which transformers toggles at call time and which change no id, left out)."""
    spec = json.loads(backend_json(tokenizer))
    spec.pop("padding", None)
    spec.pop("truncation", None)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise DepthAttnError(
            f"the tokenizer ({type(tokenizer).__name__}) has no EOS token; packing separates "
            f"documents with it: set eos_token in its tokenizer_config.json")
    return int(tokenizer.eos_token_id)


def tokenizer_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Number of ids the tokenizer can emit (base vocabulary plus added tokens, or one past
    its largest id where that is more)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype of the shards' ids: uint16 below 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def check_vocab_fits(tokenizer_vocab_size: int, model_vocab_size: int) -> None:
    """Every id the tokenizer emits must index the model's embedding (a larger model vocab,
    e.g. padded to a multiple of 64, is fine)."""
    if tokenizer_vocab_size > model_vocab_size:
        raise DepthAttnError(
            f"the tokenizer has {tokenizer_vocab_size} tokens (ids up to "
            f"{tokenizer_vocab_size - 1}), but the model's vocab_size is {model_vocab_size}; "
            f"the model's vocab_size must be at least {tokenizer_vocab_size}")
