"""Training configuration: a flat dataclass, read from TOML or YAML, overridden on the command
line, validated before any work starts, and written resolved into the run directory."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.checks import (
    is_int,
    require_int,
    require_number,
    require_positive_int,
)
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.parsing import parse_value
from depthattn.utils.suggest import did_you_mean
from depthattn.utils.text_files import read_utf8

DTYPES = ("auto", "float32", "bfloat16")
LOOP_SAMPLINGS = ("fixed", "poisson_lognormal")  # how a looped model's depth is drawn per step


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # outputs: config, metrics.jsonl, checkpoints/, model/
    # --- data ---
    data: str = "default"  # a prepared folder / manifest.json, or a source for `prepare`
    vocab_size: int = 8192  # BPE vocabulary trained when `data` still needs preparing
    # --- model ---
    model: str = "tiny"  # a ModelConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    method: str = "vanilla"
    method_options: dict[str, Any] = field(default_factory=dict)
    # --- batch and budget ---
    seq_len: int = 256
    micro_batch_size: int = 8  # sequences per forward/backward on one device
    global_batch_tokens: int = 0  # tokens per optimizer step; 0 = one micro batch (no accumulation)
    steps: int = 200  # optimizer steps
    # --- optimizer and schedule (the paper's recipe: AdamW, warmup 2 %, cosine to 10 %) ---
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.02
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # --- execution ---
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "auto"  # auto: bfloat16 autocast on GPU, float32 on CPU
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in backward
    seed: int = 0  # model initialisation, data order and sampled depth
    init_from: str = ""  # start from these weights: a run, a depthattn / Hugging Face / Qwen3 folder
    # --- looped models: the depth r of each step (train/loop_depth.py, Huginn's rule) ---
    loop_sampling: str = "fixed"  # fixed: the model's loop_iterations; or poisson_lognormal
    # r ~ Poisson(λ) + 1, λ ~ LogNormal(ln r̄ − σ²/2, σ): r̄ = E[λ], E[r] = r̄ + 1 (uncapped)
    loop_mean_rate: float = 0.0  # r̄; 0 = loop_iterations − 1, so that E[r] = loop_iterations
    loop_sigma: float = 0.5  # σ (Huginn's 0.5)
    loop_max_iterations: int = 0  # cap on the sampled r; 0 = no cap
    backprop_iterations: int = 0  # gradients through the last b iterations only; 0 = all
    # --- distributed, under torchrun (docs/distributed.md) ---
    dp_replicate: int = 1  # HSDP: replicate over this many groups of ranks, shard within each
    fsdp_cpu_offload: bool = False  # sharded weights, gradients and AdamW state in CPU memory
    async_checkpoint: bool = False  # write distributed checkpoints in a background thread
    dist_timeout_s: int = 600  # a collective that waits longer (a dead or hung rank) fails
    # --- outputs ---
    log_every: int = 10
    eval_every: int = 50  # 0: only at the end
    eval_windows: int = 64  # windows of seq_len tokens per intermediate evaluation; 0 = all
    # (the final evaluation always reads the whole validation split)
    checkpoint_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 2  # older step checkpoints are removed; the final model is kept
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed
    progress: bool = True  # tqdm progress bar
    # --- safety ---
    max_bad_steps: int = 10  # non-finite steps in a row (each skipped) before the run stops

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("seq_len", "micro_batch_size", "steps", "vocab_size"):
            require_positive_int(name, getattr(self, name))
        for name in ("global_batch_tokens", "log_every", "eval_every", "eval_windows",
                     "checkpoint_every", "seed"):
            require_int(name, getattr(self, name), 0)
        require_int("keep_checkpoints", self.keep_checkpoints, 1)
        require_int("dp_replicate", self.dp_replicate, 1)
        require_int("dist_timeout_s", self.dist_timeout_s, 1)
        require_int("max_bad_steps", self.max_bad_steps, 1)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DepthAttnError(f"lr ({self.lr!r}) must be > 0 and finite")
        for name in ("min_lr_ratio", "warmup_ratio", "beta1", "beta2"):
            value = getattr(self, name)
            closed = name == "min_lr_ratio"  # 1: a constant LR after warmup
            if not (0 <= value < 1 or (closed and value == 1)):
                raise DepthAttnError(f"{name} ({value!r}) must be in [0, {'1]' if closed else '1)'}")
        for name in ("weight_decay", "grad_clip"):
            require_number(name, getattr(self, name), 0.0)
        require_number("eps", self.eps, 0.0, strict=True)
        self._check_loop_fields()
        if self.dtype not in DTYPES:
            raise DepthAttnError(f"dtype ({self.dtype!r}) must be one of {', '.join(DTYPES)}")
        micro_tokens = self.micro_batch_size * self.seq_len
        if self.global_batch_tokens and self.global_batch_tokens % micro_tokens:
            raise DepthAttnError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"micro_batch_size x seq_len ({self.micro_batch_size} x {self.seq_len} = "
                f"{micro_tokens})")

    def _check_loop_fields(self) -> None:
        """The loop fields alone; ``check_loop_training`` checks them against the model."""
        if self.loop_sampling not in LOOP_SAMPLINGS:
            raise DepthAttnError(f"loop_sampling ({self.loop_sampling!r}) must be one of "
                                 f"{', '.join(LOOP_SAMPLINGS)}"
                                 f"{did_you_mean(self.loop_sampling, LOOP_SAMPLINGS)}")
        require_number("loop_mean_rate", self.loop_mean_rate, 0.0)
        require_number("loop_sigma", self.loop_sigma, 0.0, strict=True)
        require_int("loop_max_iterations", self.loop_max_iterations, 0, hint=" (0 = no cap)")
        require_int("backprop_iterations", self.backprop_iterations, 0, hint=" (0 = all)")
        if self.loop_sampling == "fixed":
            for name in ("loop_mean_rate", "loop_max_iterations"):
                if getattr(self, name):
                    raise DepthAttnError(f"{name} ({getattr(self, name)!r}) is read only by "
                                         f"loop_sampling 'poisson_lognormal', not 'fixed': set "
                                         f"loop_sampling or leave {name} at 0")

    def check_loop_training(self, model_config) -> None:
        """The loop fields against the model they train; ``model_config()`` runs it."""
        sampled = self.loop_sampling != "fixed"
        if (sampled or self.backprop_iterations) and not model_config.looped:
            used = (f"loop_sampling {self.loop_sampling!r}" if sampled
                    else f"backprop_iterations ({self.backprop_iterations})")
            raise DepthAttnError(f"{used} needs a looped model, and this one is not (loop_layers "
                                 f"= 0): set loop_layers (and prelude_layers) in model_overrides, "
                                 f"or leave loop_sampling 'fixed' and backprop_iterations 0")
        if sampled and self.loop_rate(model_config) <= 0:
            raise DepthAttnError(f"loop_mean_rate 0 takes the rate from the model's loop_iterations "
                                 f"- 1 = {model_config.loop_iterations - 1}, and the rate must be "
                                 f"> 0: set loop_mean_rate > 0 or loop_iterations >= 2")
        b = self.backprop_iterations
        truncated = b and (sampled or b < model_config.loop_iterations)
        if truncated and model_config.loop_injection == "none":
            # The first iteration that takes gradients then starts from a state computed under
            # no_grad: nothing before the loop (prelude, embeddings) would learn through it.
            raise DepthAttnError(f"backprop_iterations ({b}) cuts the gradient before the looped "
                                 f"block, and loop_injection 'none' gives the prelude and the "
                                 f"embeddings no other way to the loss: use loop_injection 'add' "
                                 f"or "
                                 f"'concat' (Huginn's), or backprop_iterations 0 (all)")

    def loop_rate(self, model_config) -> float:
        """r̄ of ``poisson_lognormal``: loop_mean_rate, or loop_iterations − 1 when 0 (the
        model's configured r is then the mean training depth, and its evaluation depth)."""
        return self.loop_mean_rate or float(model_config.loop_iterations - 1)

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_step_for(1)

    def grad_accumulation_for(self, world_size: int) -> int:
        """Micro batches per optimizer step on each of ``world_size`` ranks."""
        rank_tokens = world_size * self.micro_batch_size * self.seq_len
        if self.global_batch_tokens and self.global_batch_tokens % rank_tokens:
            raise DepthAttnError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"world size x micro_batch_size x seq_len ({world_size} x "
                f"{self.micro_batch_size} x {self.seq_len} = {rank_tokens}) to split over "
                f"{world_size} process(es)")
        return max(1, self.global_batch_tokens // rank_tokens)

    def tokens_per_step_for(self, world_size: int) -> int:
        """Tokens per optimizer step over all ranks (global_batch_tokens when it is set)."""
        return (self.grad_accumulation_for(world_size) * world_size * self.micro_batch_size
                * self.seq_len)

    def model_config(self, vocab_size: int | None = None):
        """The ModelConfig this run trains (vocab from the tokenizer unless overridden)."""
        from depthattn.methods import resolve_config
        from depthattn.model.config import ModelConfig

        overrides = dict(self.model_overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        config = resolve_config(ModelConfig.from_preset(
            self.model, method=self.method, method_options=self.method_options, **overrides))
        self.check_loop_training(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


# What each annotation admits, and how an error says it. Numbers admit integers (``lr=1``
# parses as one), never booleans, which Python counts as integers.
_TYPES: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (is_int, "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict[str, Any]": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                       "a table / JSON object, e.g. {\"stride\": 2}"),
}


def check_field_types(config: TrainConfig) -> None:
    """Each field of the annotated type, before any range check compares it with a number."""
    for f in dataclasses.fields(config):
        admits, kind = _TYPES[f.type]
        value = getattr(config, f.name)
        if not admits(value):
            raise DepthAttnError(f"{f.name} ({value!r}) must be {kind}, not "
                                 f"{type(value).__name__}")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def shipped_configs() -> dict[str, Path]:
    """The experiment files that come with the package (quickstart, paper_<preset>)."""
    from importlib import resources

    folder = Path(str(resources.files("depthattn") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Fields from a .toml, .yaml/.yml or .json file (flat, or under a [train] table), or from
    a shipped config named without its suffix (e.g. ``paper_3b``)."""
    path = _config_path(path)
    data = _config_tables(path)
    data = data.get("train", data)
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        hints = "".join(did_you_mean(name, field_names()) for name in unknown[:1])
        raise DepthAttnError(f"{path}: unknown field(s) {', '.join(map(repr, unknown))}{hints}; "
                             f"allowed: {', '.join(field_names())}")
    return data


# The tables a config file may hold besides [train]: `depthattn compare`'s settings.
COMPARE_SETTINGS = {"methods": list, "seeds": list, "out": str, "baseline": str, "tasks": str,
                    "task_limit": int, "sweep": str, "tune": str, "tune_seeds": list,
                    "table": str}


def _config_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file() and str(path) in shipped_configs():
        path = shipped_configs()[str(path)]
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (shipped configs: "
                                f"{', '.join(shipped_configs())})")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise DepthAttnError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    return path


def _config_tables(path: Path) -> dict[str, Any]:
    """The file's top level; with a [train] table, the only other table allowed is
    [compare]."""
    data = _parse_config_text(path, read_utf8(path, "config file"))
    if not isinstance(data, dict):
        raise DepthAttnError(f"config file {path} must hold a table of fields, not "
                             f"{type(data).__name__}")
    if "train" in data:
        others = sorted(set(data) - {"train", "compare"})
        if others:
            raise DepthAttnError(f"{path}: unknown table(s) or field(s) {', '.join(others)} "
                                 f"beside [train]; allowed: [train], [compare]")
    return data


def read_compare_settings(path: str | Path) -> dict[str, Any]:
    """The [compare] table of a config file (methods, seeds, tune, ...), checked; {} without
    one."""
    path = _config_path(path)
    settings = dict(_config_tables(path).get("compare", {}))
    for name, value in settings.items():
        kind = COMPARE_SETTINGS.get(name)
        if kind is None:
            raise DepthAttnError(f"{path}: unknown [compare] setting {name!r}; allowed: "
                                 f"{', '.join(COMPARE_SETTINGS)}{did_you_mean(name, COMPARE_SETTINGS)}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DepthAttnError(f"{path}: [compare] {name} ({value!r}) must be a "
                                 f"{kind.__name__}")
    return settings


def _parse_config_text(path: Path, text: str) -> Any:
    """TOML, YAML or JSON by suffix; a syntax error names the file and where in it."""
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        parse, syntax_error, kind = tomllib.loads, tomllib.TOMLDecodeError, "TOML"
    elif path.suffix == ".json":
        parse, syntax_error, kind = json.loads, json.JSONDecodeError, "JSON"
    else:
        import yaml

        parse, syntax_error, kind = (lambda t: yaml.safe_load(t) or {}), yaml.YAMLError, "YAML"
    try:
        return parse(text)
    except syntax_error as error:
        raise DepthAttnError(f"config file {path} is not valid {kind}: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as JSON when it is JSON (numbers, booleans,
    objects), as a plain string otherwise."""
    if "=" not in text:
        raise DepthAttnError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if key not in field_names():
        raise DepthAttnError(f"override {key!r} is not a training field"
                             f"{did_you_mean(key, field_names())}; allowed: "
                             f"{', '.join(field_names())}")
    return key, parse_value(raw)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      base: dict[str, Any] | None = None, **fields: Any) -> TrainConfig:
    """``base`` (e.g. a run's saved config), then file fields, then ``key=value`` overrides,
    then keyword fields, validated once."""
    data = dict(base or {})
    data.update(read_config_file(path) if path is not None else {})
    for text in overrides or []:
        key, value = parse_override(text)
        data[key] = value
    data.update(fields)
    return TrainConfig(**data)
