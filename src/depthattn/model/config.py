"""Model configuration: geometry, method, named presets, validation, and conversion to and from
transformers' Qwen3Config and DeepseekV3Config.

This module is a leaf: it validates the geometry and holds the method's name and options as
given. The method's registry (``depthattn.methods``) validates them and fills the defaults that
depend on the geometry (Depth-Attention's stride = L // 2) when the method is built
(``depthattn.methods.resolve_config``), so the dependency points from it to here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depthattn.model.deepseek_v3_names import (
    deepseek_v3_config_from_fields,
    fields_from_deepseek_v3,
)
from depthattn.model.qwen3_names import (
    canonical_rope_parameters,
    check_rope_parameters,
    fields_from_qwen3,
    qwen3_config_from_fields,
)
from depthattn.utils.checks import require_int, require_positive_int
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.suggest import did_you_mean

if TYPE_CHECKING:
    from transformers import DeepseekV3Config, Qwen3Config

K_NORM_POSITIONS = ("before_rope", "after_rope")
# Each layer's attention span (Hugging Face's layer_types): every earlier token, or the last
# sliding_window tokens (itself included).
LAYER_TYPES = ("full_attention", "sliding_attention")
# How a looped block's iterations read the prelude's output (docs/method.md §7, depthattn.model.looped).
LOOP_INJECTIONS = ("none", "add", "concat")
# Attention kinds: grouped-query (Qwen3's; MHA when H_kv = H) or multi-head latent attention
# (DeepSeek-V2/V3's MLA: one latent cache entry per token and layer, docs/method.md §9).
ATTENTION_KINDS = ("gqa", "mla")
MLA_DIMS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")

@dataclass
class ModelConfig:
    """A Qwen3-style decoder and the cross-layer method it runs.

    Field names follow the paper's notation where one exists (L layers, H query heads,
    H_kv kv heads, d head_dim). Validation happens in ``__post_init__``; method options are
    resolved against the geometry there (e.g. Depth-Attention's stride defaults to L // 2).
    """

    vocab_size: int = 50304  # tokens in the vocabulary
    hidden_size: int = 1024  # d_model
    intermediate_size: int = 2816  # SwiGLU inner width
    num_layers: int = 24  # L
    num_heads: int = 16  # H query heads
    num_kv_heads: int = 16  # H_kv; G = H / H_kv query heads share one kv head
    head_dim: int | None = None  # d; None means hidden_size // num_heads
    max_seq_len: int = 2048  # longest sequence (prompt + generated) the model accepts
    rope_theta: float = 10000.0
    # RoPE scaling, as Hugging Face's rope_parameters: rope_type (linear, dynamic, yarn, llama3)
    # and that type's keys. None: unscaled RoPE at rope_theta.
    rope_parameters: dict[str, Any] | None = None
    # Sliding-window attention: the layers of type "sliding_attention" see the last
    # sliding_window tokens only. layer_types: one per layer; None: every layer sliding when a
    # window is set, else every layer full.
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02  # N(0, std^2) for every linear and embedding weight
    tie_embeddings: bool = False  # the paper's models are untied; small Qwen3 checkpoints are tied
    # Qwen3 normalises keys before RoPE; the authors' Hugging Face code does it after RoPE.
    k_norm_position: str = "before_rope"
    # Multi-head latent attention (attention="mla"), with DeepseekV3's names: the latent rank
    # d_c, the per-head no-RoPE and RoPE query/key dims, the value dim, an optional query rank
    # d_q, and whether the RoPE dims are stored interleaved. head_dim is then d_nope + d_rope.
    attention: str = "gqa"
    kv_lora_rank: int | None = None  # d_c
    q_lora_rank: int | None = None  # d_q; None: one q_proj
    qk_nope_head_dim: int | None = None  # d_nope
    qk_rope_head_dim: int | None = None  # d_rope
    v_head_dim: int | None = None  # d_v
    rope_interleave: bool = True
    # Looped (recurrent-depth) geometry, docs/method.md §7: a prelude of p layers, a block of k layers
    # applied r times with shared weights, a coda of the other num_layers - p - k layers.
    # num_layers counts distinct layers (the state dict's); num_applications = p + k·r + c.
    prelude_layers: int = 0  # p
    loop_layers: int = 0  # k; 0 = not looped
    loop_iterations: int = 1  # r; may change after training (test-time depth)
    loop_injection: str = "none"  # how each iteration reads the prelude's output: none/add/concat
    method: str = "vanilla"  # a name from depthattn.methods.method_names(), or two joined by '+'
    # the method's options; resolved (validated, defaults filled) when the method is built
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_seq_len"):
            require_positive_int(name, getattr(self, name))
        self._check_attention()
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise DepthAttnError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                    f"({self.num_heads}) when head_dim is not set; set head_dim explicitly or "
                    f"choose num_heads among the divisors of {self.hidden_size}")
            self.head_dim = self.hidden_size // self.num_heads
        require_positive_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise DepthAttnError(f"head_dim ({self.head_dim}) must be even (RoPE rotates pairs)")
        if self.num_heads % self.num_kv_heads:
            raise DepthAttnError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads "
                f"({self.num_kv_heads}): each kv head serves a whole group of query heads")
        for name in ("rope_theta", "rms_norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise DepthAttnError(f"{name} ({value!r}) must be a positive number")
        if self.k_norm_position not in K_NORM_POSITIONS:
            raise DepthAttnError(f"k_norm_position ({self.k_norm_position!r}) must be one of "
                                 f"{', '.join(K_NORM_POSITIONS)}")
        check_rope_parameters(self.rope_parameters, self.rope_theta, self.rope_dim,
                              self.max_seq_len)
        # one spelling of each setting: unscaled RoPE is None, θ lives in rope_theta
        self.rope_parameters = canonical_rope_parameters(self.rope_parameters)
        self._check_layer_types()
        self._check_loop()
        self._check_mla_scope()
        if not isinstance(self.method, str):
            raise DepthAttnError(f"method ({self.method!r}) must be a method name, e.g. "
                                 f"'depth_attention'")
        if not isinstance(self.method_options, dict):
            raise DepthAttnError(f"method_options ({self.method_options!r}) must be a mapping of "
                                 f"option names to values")

    def _check_attention(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise DepthAttnError(f"attention ({self.attention!r}) must be one of "
                                 f"{', '.join(ATTENTION_KINDS)}"
                                 f"{did_you_mean(self.attention, ATTENTION_KINDS)}")
        if not isinstance(self.rope_interleave, bool):
            raise DepthAttnError(f"rope_interleave ({self.rope_interleave!r}) must be True or "
                                 f"False")
        if self.attention == "gqa":
            given = [n for n in (*MLA_DIMS, "q_lora_rank") if getattr(self, n) is not None]
            if given:
                raise DepthAttnError(f"{given[0]} ({getattr(self, given[0])}) is an MLA dimension "
                                     f"but attention is 'gqa'; set attention='mla' or drop it")
            if not self.rope_interleave:
                raise DepthAttnError("rope_interleave (False) applies to MLA's rotary dims "
                                     "(attention='mla'); GQA heads rotate in halves; leave it "
                                     "True")
            return
        if self.k_norm_position != "before_rope":
            raise DepthAttnError(f"k_norm_position ({self.k_norm_position!r}) applies to GQA "
                                 f"keys; MLA layers have no key norm: leave it 'before_rope'")
        for name in MLA_DIMS:
            if getattr(self, name) is None:
                raise DepthAttnError(f"attention 'mla' needs {name}; set "
                                     f"{', '.join(MLA_DIMS)}")
            require_positive_int(name, getattr(self, name))
        if self.q_lora_rank is not None:
            require_positive_int("q_lora_rank", self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            raise DepthAttnError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even (RoPE "
                                 f"rotates pairs)")
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.head_dim is None:
            self.head_dim = qk
        elif self.head_dim != qk:
            raise DepthAttnError(f"head_dim ({self.head_dim}) must be qk_nope_head_dim + "
                                 f"qk_rope_head_dim ({qk}) with attention 'mla', or None")
        if self.num_kv_heads != self.num_heads:
            raise DepthAttnError(f"num_kv_heads ({self.num_kv_heads}) must equal num_heads "
                                 f"({self.num_heads}) with attention 'mla': every head reads the "
                                 f"one latent entry")

    def _check_mla_scope(self) -> None:
        if self.attention != "mla":
            return
        refused = {"rope_parameters": self.rope_parameters is not None,
                   "loop_layers": self.loop_layers != 0}
        for name, given in refused.items():
            if given:
                raise DepthAttnError(f"{name} ({getattr(self, name)!r}) is not supported with "
                                     f"attention 'mla': MLA models here use unscaled RoPE "
                                     f"(yarn's mscale would change the attention scale) and no "
                                     f"looped block")

    @property
    def rope_dim(self) -> int:
        """The dims RoPE rotates per head: d_rope for MLA, the whole head otherwise."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def latent_values_cached(self) -> bool:
        """Whether an MLA cache holds each layer's mixed latent c̃ beside its own entry:
        Depth-Attention's ``values`` rule (docs/method.md §9)."""
        parts = self.method.split("+")
        if self.attention != "mla" or "depth_attention" not in parts:
            return False
        options = self.method_options.get("depth_attention", {}) if len(parts) > 1 \
            else self.method_options
        return isinstance(options, Mapping) and options.get("mla_mix") == "values"

    @property
    def kv_cache_width(self) -> int:
        """Numbers the KV cache holds per token and layer: 2·H_kv·d with GQA; d_c + d_rope with
        MLA, plus d_c under Depth-Attention's ``values`` rule."""
        if self.attention == "gqa":
            return 2 * self.num_kv_heads * self.head_dim
        extra = self.kv_lora_rank if self.latent_values_cached else 0
        return self.kv_lora_rank + self.qk_rope_head_dim + extra

    @property
    def kv_cache_shape(self) -> tuple[int, int, int]:
        """(heads, key width, value width) of one layer's cache entry per token: (H_kv, d, d)
        with GQA; with MLA one entry [c ; k^R] as the key, (1, d_c + d_rope, 0), whose values
        are read from the same latent, or (1, d_c + d_rope, d_c) under the ``values`` rule."""
        if self.attention == "gqa":
            return self.num_kv_heads, self.head_dim, self.head_dim
        return 1, self.kv_lora_rank + self.qk_rope_head_dim, \
            self.kv_lora_rank if self.latent_values_cached else 0

    def _check_layer_types(self) -> None:
        if self.sliding_window is not None:
            require_positive_int("sliding_window", self.sliding_window)
        if self.layer_types is None:
            return
        self.layer_types = list(self.layer_types)
        uniform = "full_attention" if self.sliding_window is None else "sliding_attention"
        if self.layer_types == [uniform] * self.num_layers:
            self.layer_types = None  # what None means: one spelling of each setting
            return
        if len(self.layer_types) != self.num_layers:
            raise DepthAttnError(f"layer_types has {len(self.layer_types)} entries; it needs one "
                                 f"per layer (num_layers = {self.num_layers})")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise DepthAttnError(f"layer_types entry {unknown[0]!r} is unknown; allowed: "
                                 f"{', '.join(LAYER_TYPES)}")
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise DepthAttnError("layer_types has sliding_attention layers but sliding_window is "
                                 "None; set sliding_window (tokens each such layer sees)")

    def _check_loop(self) -> None:
        require_int("prelude_layers", self.prelude_layers, 0)
        require_int("loop_layers", self.loop_layers, 0, hint=" (0 = not looped)")
        require_int("loop_iterations", self.loop_iterations, 1)
        if self.loop_layers == 0 and self.loop_iterations != 1:
            raise DepthAttnError(f"loop_iterations ({self.loop_iterations}) needs a looped block: "
                                 f"set loop_layers (k >= 1), or leave loop_iterations at 1")
        if self.prelude_layers + self.loop_layers > self.num_layers:
            raise DepthAttnError(f"prelude_layers + loop_layers ({self.prelude_layers} + "
                                 f"{self.loop_layers} = {self.prelude_layers + self.loop_layers}) "
                                 f"exceeds num_layers ({self.num_layers})")
        if self.loop_injection not in LOOP_INJECTIONS:
            raise DepthAttnError(f"loop_injection ({self.loop_injection!r}) must be one of "
                                 f"{', '.join(LOOP_INJECTIONS)}"
                                 f"{did_you_mean(self.loop_injection, LOOP_INJECTIONS)}")

    def layer_window(self, layer: int) -> int | None:
        """How many tokens layer ``layer`` attends to (itself included); None: every earlier one."""
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def looped(self) -> bool:
        """Whether a block of layers is applied more than once (or could be: k >= 1)."""
        return self.loop_layers > 0

    @property
    def num_applications(self) -> int:
        """L_eff = p + k·r + c: how many layer applications a forward runs; the KV cache and the
        depth stash hold one slot per application. num_layers when not looped."""
        return self.num_layers + self.loop_layers * (self.loop_iterations - 1)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see ``PRESETS``) with fields overridden, e.g.
        ``ModelConfig.from_preset("tiny", method="depth_attention", method_options={"stride": 2})``."""
        if name not in PRESETS:
            raise DepthAttnError(f"preset ({name!r}) is unknown; allowed: {', '.join(PRESETS)}"
                                 f"{did_you_mean(name, PRESETS)}")
        fields = {**PRESETS[name], **overrides}
        _reject_unknown_fields(fields)
        return cls(**fields)

    def with_method(self, method: str, **method_options: Any) -> ModelConfig:
        """The same geometry running another cross-layer method."""
        return dataclasses.replace(self, method=method, method_options=method_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        _reject_unknown_fields(data)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # --- Qwen3 interop -------------------------------------------------------------------
    @classmethod
    def from_qwen3(cls, hf_config: Qwen3Config, method: str = "vanilla",
                   overrides: Mapping[str, Any] | None = None,
                   **method_options: Any) -> ModelConfig:
        """The equivalent of a ``transformers.Qwen3Config``; refuses features we do not model.
        ``overrides``: ModelConfig fields to set beside the Qwen3 geometry, e.g. a looped
        reading of the same weights: ``{"prelude_layers": 2, "loop_layers": 4}``."""
        fields = {**fields_from_qwen3(hf_config), **(overrides or {})}
        _reject_unknown_fields(fields)
        return cls(**fields, method=method, method_options=method_options)

    def to_qwen3(self) -> Qwen3Config:
        """The ``transformers.Qwen3Config`` of the same geometry (the method is not represented)."""
        if self.looped:
            raise DepthAttnError(f"a looped model (loop_layers={self.loop_layers}) has no Qwen3Config: "
                                 f"Qwen3 applies each layer once; its weights are a Qwen3 state "
                                 f"dict "
                                 f"of num_layers ({self.num_layers}) layers all the same")
        return qwen3_config_from_fields(self.to_dict())

    # --- DeepseekV3 interop (MLA) --------------------------------------------------------
    @classmethod
    def from_deepseek_v3(cls, hf_config: DeepseekV3Config, method: str = "vanilla",
                         overrides: Mapping[str, Any] | None = None,
                         **method_options: Any) -> ModelConfig:
        """The MLA model of a dense ``transformers.DeepseekV3Config``; refuses what we do not
        model (mixture-of-experts layers, scaled RoPE, biases, ...) by name. ``overrides``:
        ModelConfig fields to set beside the DeepseekV3 geometry."""
        fields = {**fields_from_deepseek_v3(hf_config), **(overrides or {})}
        _reject_unknown_fields(fields)
        return cls(**fields, method=method, method_options=method_options)

    def to_deepseek_v3(self) -> DeepseekV3Config:
        """The ``transformers.DeepseekV3Config`` of the same MLA geometry, dense in every layer
        (the method is not represented)."""
        return deepseek_v3_config_from_fields(self.to_dict())


def _reject_unknown_fields(fields: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise DepthAttnError(f"unknown ModelConfig field(s) {', '.join(map(repr, unknown))}; "
                             f"allowed: "
                             f"{', '.join(sorted(known))}{did_you_mean(unknown[0], known)}")


# Paper presets (docs/design.md lists their sources). The 360M-710M rows are MHA; 1.5B/3B are the
# released GQA-4x configs; 410M is the authors' public companion config. Vocabulary 50304
# unless the source says otherwise. Depth-Attention's stride defaults to L // 2 (24 at 3B).
PRESETS: dict[str, dict[str, Any]] = {
    # Laptop-sized: the demo, the tests' big brother and CPU benchmarks.
    "tiny": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_layers=8,
                 num_heads=4, num_kv_heads=2, head_dim=64, max_seq_len=1024, rms_norm_eps=1e-6,
                 init_std=0.02),
    # The tiny and quickstart widths with multi-head latent attention (docs/method.md §9).
    "mla-tiny": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_layers=8,
                     num_heads=4, num_kv_heads=4, max_seq_len=1024, rms_norm_eps=1e-6,
                     init_std=0.02, attention="mla", kv_lora_rank=128, qk_nope_head_dim=48,
                     qk_rope_head_dim=16, v_head_dim=64),
    # the quickstart's model (src/depthattn/configs/quickstart.toml) with an MLA cache of
    # d_c + d_rope = 80 numbers per token and layer, against its GQA cache's 2·2·32 = 128
    "mla-quickstart": dict(vocab_size=4096, hidden_size=128, intermediate_size=352,
                           num_layers=8, num_heads=4, num_kv_heads=4, max_seq_len=1024,
                           rms_norm_eps=1e-6, init_std=0.02, attention="mla", kv_lora_rank=64,
                           qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32),
    "360m": dict(vocab_size=50304, hidden_size=960, intermediate_size=2540, num_layers=24,
                 num_heads=15, num_kv_heads=15, head_dim=64, max_seq_len=2048,
                 rms_norm_eps=1e-5, init_std=0.02),
    "500m": dict(vocab_size=50304, hidden_size=1152, intermediate_size=3072, num_layers=24,
                 num_heads=18, num_kv_heads=18, head_dim=64, max_seq_len=2048,
                 rms_norm_eps=1e-5, init_std=0.02),
    "710m": dict(vocab_size=50304, hidden_size=1280, intermediate_size=3072, num_layers=32,
                 num_heads=20, num_kv_heads=20, head_dim=64, max_seq_len=2048,
                 rms_norm_eps=1e-5, init_std=0.02),
    "1.5b": dict(vocab_size=50304, hidden_size=1536, intermediate_size=4096, num_layers=48,
                 num_heads=24, num_kv_heads=6, head_dim=64, max_seq_len=2048,
                 rms_norm_eps=1e-5, init_std=0.01),
    "3b": dict(vocab_size=50304, hidden_size=2048, intermediate_size=6912, num_layers=48,
               num_heads=32, num_kv_heads=8, head_dim=64, max_seq_len=2048,
               rms_norm_eps=1e-5, init_std=0.01),
    "410m": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_layers=32,
                 num_heads=16, num_kv_heads=4, head_dim=64, max_seq_len=4096,
                 rms_norm_eps=1e-6, init_std=0.02),
}
