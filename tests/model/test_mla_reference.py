"""The whole MLA decoder against an independent float64 transcription of docs/method.md §9.

``mla_reference`` below is written from the spec alone: §1's pre-norm block (RMSNorm → attention
→ residual; RMSNorm → SwiGLU → residual), §9's multi-head latent attention (with and without a
query rank, either RoPE layout), §2's depth sources, and on top of MLA the three cross-layer
rules of §9 — Depth-Attention's ``latent`` rule (the mix reaches keys and values), its
``values`` rule (keys from the layer's own fresh entry) and the latent residual (fixed λ = ½ or
one learned λ_l per layer). It reads only state-dict tensors, by transformers' DeepseekV3 names
(notes: /work/notes/mla_api.md), and a geometry dict the test also builds the model from; it
imports nothing of depthattn but ``ModelConfig``/``CausalLM`` to build the model under test.

What is checked:
- float64 logits and every parameter's gradient equal the reference to 1e-10 relative;
- the float32 model stays within ``ATOL_FP32`` of the float64 reference;
- the depth weights are distributions (in the reference, and as the package records them);
- cached decoding (prefill, then one token per call) gives the reference's logits too, and so
  does every depth-mix implementation (reference, unstacked, inference, triton);
- broken references (plausible implementation mistakes) miss the package by far more than the
  tolerance, so the tolerance bites;
- the reference's vanilla MLA equals transformers' ``DeepseekV3ForCausalLM`` (dense MLPs) on the
  same weights, which pins its RoPE layouts and projections to the model §9 names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from depthattn import CausalLM, ModelConfig
from tests.conftest import randomize_

# float64 logits/gradients: the model and the reference differ only in rounding order
REL_FP64 = 1e-10
# float32 model vs float64 reference, logits up to ~3 through 4 layers: measured max |Δ| 2.5e-6
# (relative 1.1e-6) over every rule in CASES; 4× headroom
ATOL_FP32 = 1e-5
# a broken reference must miss the package by at least this much (relative): 10⁶ × REL_FP64
REL_BROKEN = 1e-4

# hidden 64, 4 layers, H = 4 heads, d_nope 8, d_rope 4, d_v 8, d_c 16, (d_q 12), vocab 97
GEOM = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=4, num_heads=4,
            num_kv_heads=4, max_seq_len=32, rope_theta=10000.0, rms_norm_eps=1e-6,
            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
D_Q = 12
B, T = 2, 7


# --- the reference (docs/method.md §1, §2, §9), plain float64 torch ------------------------------


@dataclass(frozen=True)
class Rule:
    """What the reference runs: ``vanilla``; Depth-Attention ``latent`` / ``values`` with §2's
    stride s and recent window w; or the latent ``residual`` (``fixed`` λ = ½ or ``learned``)."""

    kind: str = "vanilla"
    stride: int | None = None  # None: §2's default max(1, L // 2)
    window: int = 0
    residual: str = "fixed"

    def method(self) -> tuple[str, dict]:
        """The package's method name and options asking for this rule."""
        if self.kind == "vanilla":
            return "vanilla", {}
        if self.kind == "residual":
            return "value_residual", {"mode": self.residual}
        if self == Rule("latent"):
            return "depth_attention", {}  # the defaults: mla_mix "latent", s = L // 2, w = 0
        options = {"mla_mix": self.kind}
        if self.stride is not None:
            options["stride"] = self.stride
        if self.window:
            options["recent_window"] = self.window
        return "depth_attention", options


def sources(layer: int, stride: int, window: int) -> list[int]:
    """§2: S(l) = { j : 0 ≤ j < l and (j mod s == 0 or j ≥ l − w) }, ascending."""
    return [j for j in range(layer) if j % stride == 0 or j >= layer - window]


# DeepseekV3's latent norms (q_a_layernorm, kv_a_layernorm) take RMSNorm's default eps, not
# rms_norm_eps
LATENT_EPS = 1e-6


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gain


# RoPE precision is no part of §9: transformers and depthattn form the angles in float32 (a
# float32 frequency table, then cos/sin cast to the model's dtype). The reference uses whichever
# of these is closest to the model; they differ by ~1e-8 in the logits, mistakes by > 1e-3.
ROPE_PRECISIONS = [(torch.float32, torch.float32), (torch.float32, torch.float64),
                   (torch.float64, torch.float64)]  # (frequency table dtype, angle dtype)


def rope_tables(d: int, theta: float, precision) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, d) in float64 for positions 0..T−1, rotate-half layout (pairs i, i + d/2)."""
    freq_dtype, angle_dtype = precision
    exponents = torch.arange(0, d, 2, dtype=torch.int64).to(freq_dtype) / d
    inv_freq = (1.0 / theta ** exponents).to(angle_dtype)  # (d/2,)
    angles = torch.arange(T).to(angle_dtype)[:, None] * inv_freq  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d)
    return angles.cos().double(), angles.sin().double()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """x (B, T, heads, d) → RoPE_t(x). With ``interleave`` the d dims are stored as pairs
    (x0, x1), (x2, x3), ...: de-interleave first (evens, then odds), as DeepseekV3 does; the
    result stays in the de-interleaved layout (queries and keys alike, so dot products agree)."""
    if interleave:
        x = x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Params(dict):
    """The state dict as float64 tensors; remembers which names the reference read."""

    def __init__(self, tensors: dict) -> None:
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.read.add(name)
        return super().__getitem__(name).double()


@dataclass
class Reference:
    logits: torch.Tensor  # (B, T, V)
    alphas: dict = field(default_factory=dict)  # layer → (B, T, |S(l)| + 1), self last
    sources: dict = field(default_factory=dict)  # layer → S(l)


# Deliberate mistakes, for the test that shows the tolerance bites.
BROKEN = {
    None: "the spec",
    "mix_before_norm": "entries mixed before kv_a_layernorm (raw c scored and mixed, the mix "
                       "then normalised by layer l's gain)",
    "rope_key_unmixed": "the rotary key k^R left unmixed (only c mixed)",
    "source_kv_b": "each source scored with its own layer's kv_b_proj instead of layer l's",
    "sources_raw_rope_key": "values rule: sources offer their own k^R instead of the mixed k̃^R",
    "no_sigma": "depth scores without σ",
}


def mla_reference(params: dict, ids: torch.Tensor, rule: Rule, q_lora_rank: int | None,
                  interleave: bool, precision=ROPE_PRECISIONS[0],
                  lambdas: torch.Tensor | None = None, broken: str | None = None) -> Reference:
    """The full forward (B, T) → (B, T, V). Notation: H heads, d_nope/d_rope/d_v per head,
    d_c latent rank, D hidden; an entry e = (c, k^R) is d_c + d_rope numbers per token and
    layer. ``lambdas``: the learned λ_l (index l − 1) of the latent residual."""
    p = params if isinstance(params, Params) else Params(params)
    L, H, eps = GEOM["num_layers"], GEOM["num_heads"], GEOM["rms_norm_eps"]
    dn, dr, dv, dc = (GEOM["qk_nope_head_dim"], GEOM["qk_rope_head_dim"], GEOM["v_head_dim"],
                      GEOM["kv_lora_rank"])
    sigma = (dn + dr) ** -0.5
    stride = max(1, L // 2) if rule.stride is None else rule.stride
    cos, sin = rope_tables(dr, GEOM["rope_theta"], precision)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))  # query t reads keys s ≤ t
    out = Reference(logits=None)
    stash: list[tuple[torch.Tensor, torch.Tensor]] = []  # ẽ_j = (c̃_j, k̃^R_j), (B, T, ·) each
    own_rope_keys: list[torch.Tensor] = []  # k^R_j, unmixed (only a broken reference reads it)
    e0 = None  # layer 0's entry, for the latent residual

    x = p["model.embed_tokens.weight"][ids]  # (B, T, D)
    for l in range(L):
        pre = f"model.layers.{l}.self_attn."
        a = rms_norm(x, p[f"model.layers.{l}.input_layernorm.weight"], eps)
        # queries: W_Q x, or W_UQ RMSNorm(W_DQ x)
        if q_lora_rank is None:
            q = a @ p[pre + "q_proj.weight"].T
        else:
            q = rms_norm(a @ p[pre + "q_a_proj.weight"].T, p[pre + "q_a_layernorm.weight"],
                         LATENT_EPS)
            q = q @ p[pre + "q_b_proj.weight"].T
        q = q.view(B, T, H, dn + dr)
        q_nope, q_rope = q[..., :dn], rope(q[..., dn:], cos, sin, interleave)  # (B, T, H, ·)
        # [c ; k̂^R] = W_DKV x, c ← RMSNorm(c), k^R = RoPE_t(k̂^R)
        ckr = a @ p[pre + "kv_a_proj_with_mqa.weight"].T  # (B, T, d_c + d_rope)
        c_raw = ckr[..., :dc]
        c = rms_norm(c_raw, p[pre + "kv_a_layernorm.weight"], LATENT_EPS)  # (B, T, d_c)
        k_rope = rope(ckr[..., None, dc:], cos, sin, interleave)[:, :, 0]  # (B, T, d_rope)
        # kv_b_proj rows per head: [W_UK,h (d_nope rows); W_UV,h (d_v rows)]
        w_ukv = p[pre + "kv_b_proj.weight"].view(H, dn + dv, dc)
        w_uk, w_uv = w_ukv[:, :dn], w_ukv[:, dn:]  # (H, d_nope, d_c), (H, d_v, d_c)

        own = (c_raw, k_rope) if broken == "mix_before_norm" else (c, k_rope)
        mixed = own  # ẽ_l; ẽ_0 = e_0 and vanilla keeps e_l
        if rule.kind in ("latent", "values") and l > 0:
            src = sources(l, stride, rule.window)
            out.sources[l] = src
            # s_l(e) = σ (u_l · c + r̄_l · k^R), u_l = mean_h W_UK,hᵀ q^N_h, r̄_l = mean_h q^R_h
            u = torch.einsum("bthn,hnc->btc", q_nope, w_uk) / H  # (B, T, d_c)
            r_bar = q_rope.mean(dim=2)  # (B, T, d_rope)
            cands = [stash[j] for j in src] + [own]
            if broken == "sources_raw_rope_key":
                cands = [(stash[j][0], own_rope_keys[j]) for j in src] + [own]
            scores = []
            for i, (cc, kk) in enumerate(cands):
                uu = u
                if broken == "source_kv_b" and i < len(src):
                    w_j = p[f"model.layers.{src[i]}.self_attn.kv_b_proj.weight"].view(
                        H, dn + dv, dc)[:, :dn]
                    uu = torch.einsum("bthn,hnc->btc", q_nope, w_j) / H
                s = (uu * cc).sum(-1) + (r_bar * kk).sum(-1)
                scores.append(s if broken == "no_sigma" else sigma * s)
            alpha = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # (B, T, |S(l)| + 1)
            out.alphas[l] = alpha
            mixed = (sum(alpha[..., i, None] * cc for i, (cc, _) in enumerate(cands)),
                     sum(alpha[..., i, None] * kk for i, (_, kk) in enumerate(cands)))
            if broken == "rope_key_unmixed":
                mixed = (mixed[0], own[1])
        elif rule.kind == "residual" and l > 0:
            lam = 0.5 if rule.residual == "fixed" else lambdas[l - 1]
            mixed = ((1 - lam) * own[0] + lam * e0[0], (1 - lam) * own[1] + lam * e0[1])
        if l == 0:
            e0 = own
        stash.append(mixed)
        own_rope_keys.append(own[1])

        # attention over the layer's cache: keys from ẽ_l (own e_l under the values rule)
        key_entry = own if rule.kind == "values" else mixed
        value_latent = mixed[0]
        if broken == "mix_before_norm":  # the raw latents normalised only now, by layer l
            g = p[pre + "kv_a_layernorm.weight"]
            key_entry = (rms_norm(key_entry[0], g, LATENT_EPS), key_entry[1])
            value_latent = rms_norm(value_latent, g, LATENT_EPS)
        k_nope = torch.einsum("btc,hnc->bthn", key_entry[0], w_uk)  # (B, T, H, d_nope)
        v = torch.einsum("btc,hvc->bthv", value_latent, w_uv)  # (B, T, H, d_v)
        heads = []
        for h in range(H):
            s = (q_nope[:, :, h] @ k_nope[:, :, h].transpose(1, 2)
                 + q_rope[:, :, h] @ key_entry[1].transpose(1, 2)) * sigma  # (B, T, T)
            s = s.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(s, dim=-1) @ v[:, :, h])  # (B, T, d_v)
        x = x + torch.cat(heads, dim=-1) @ p[pre + "o_proj.weight"].T

        # x' = h + MLP(RMSNorm(h)), SwiGLU
        mlp = f"model.layers.{l}.mlp."
        m = rms_norm(x, p[f"model.layers.{l}.post_attention_layernorm.weight"], eps)
        gate, up = m @ p[mlp + "gate_proj.weight"].T, m @ p[mlp + "up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ p[mlp + "down_proj.weight"].T

    x = rms_norm(x, p["model.norm.weight"], eps)
    out.logits = x @ p["lm_head.weight"].T
    return out


# --- the model under test ----------------------------------------------------------------------

LAMBDA_NAME = "model.cross_layer.lambdas"  # ValueResidual.lambdas[l − 1] is λ_l


def build(rule: Rule, q_lora_rank: int | None = None, interleave: bool = True, seed: int = 0,
          dtype: torch.dtype = torch.float64) -> CausalLM:
    method, options = rule.method()
    config = ModelConfig(**GEOM, attention="mla", q_lora_rank=q_lora_rank,
                         rope_interleave=interleave, method=method, method_options=options)
    torch.manual_seed(seed)
    model = CausalLM(config)
    randomize_(model, seed)  # every parameter, norm gains ~ U(0.5, 1.5) included
    if rule.kind == "residual" and rule.residual == "learned":
        with torch.no_grad():  # λ_l in (0, 1), each its own, none ½
            model.get_parameter(LAMBDA_NAME).copy_(torch.tensor([0.2, 0.7, 0.35]))
    return model.to(dtype).eval()


def ids_for(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, GEOM["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def reference_for(model: CausalLM, rule: Rule, q_lora_rank, interleave, ids, logits=None,
                  params: dict | None = None, broken: str | None = None) -> Reference:
    """The reference on the model's weights, at the RoPE precision closest to ``logits``."""
    params = model.state_dict() if params is None else params
    lambdas = params.get(LAMBDA_NAME)
    lambdas = None if lambdas is None else lambdas.double()

    def run(precision):
        return mla_reference(params, ids, rule, q_lora_rank, interleave, precision, lambdas,
                             broken)

    if logits is None:
        return run(ROPE_PRECISIONS[0])
    with torch.no_grad():
        errors = [(rel_err(logits, run(prec).logits), prec) for prec in ROPE_PRECISIONS]
    return run(min(errors, key=lambda e: e[0])[1])


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max()).item()


RULES = {
    "vanilla": Rule("vanilla"),
    "latent": Rule("latent"),  # every default: mla_mix "latent", stride L // 2 = 2, w = 0
    "latent-s1": Rule("latent", stride=1),
    "latent-s3w1": Rule("latent", stride=3, window=1),
    "values": Rule("values"),
    "values-s3w1": Rule("values", stride=3, window=1),
    "residual-fixed": Rule("residual", residual="fixed"),
    "residual-learned": Rule("residual", residual="learned"),
}

# (rule, q_lora_rank, rope_interleave): every rule once, both query paths, both layouts
CASES = [
    pytest.param("vanilla", None, True, id="vanilla-q-interleave"),
    pytest.param("vanilla", D_Q, False, id="vanilla-dq-halves"),
    pytest.param("latent", D_Q, True, id="latent-dq-interleave"),
    pytest.param("latent-s1", None, False, id="latent-s1-q-halves"),
    pytest.param("latent-s3w1", D_Q, False, id="latent-s3w1-dq-halves"),
    pytest.param("values", None, True, id="values-q-interleave"),
    pytest.param("values-s3w1", D_Q, False, id="values-s3w1-dq-halves"),
    pytest.param("residual-fixed", D_Q, True, id="residual-fixed-dq-interleave"),
    pytest.param("residual-learned", None, False, id="residual-learned-q-halves"),
]


# --- 1. logits, float64 -------------------------------------------------------------------------


@pytest.mark.parametrize("rule, q_lora_rank, interleave", CASES)
def test_logits_match_the_float64_reference(rule, q_lora_rank, interleave):
    model = build(RULES[rule], q_lora_rank, interleave)
    ids = ids_for()
    with torch.no_grad():
        logits = model(ids)
    assert logits.dtype == torch.float64 and logits.shape == (B, T, GEOM["vocab_size"])
    ref = reference_for(model, RULES[rule], q_lora_rank, interleave, ids, logits)
    err = rel_err(logits, ref.logits)
    assert err <= REL_FP64, f"max relative error {err:.3e}"


def test_the_reference_reads_every_parameter_by_its_deepseek_name():
    """The names of mla_api.md, and nothing the reference does not read (no q_norm/k_norm)."""
    for rule, q_lora_rank in [("values", None), ("residual-learned", D_Q)]:
        model = build(RULES[rule], q_lora_rank)
        params = Params(model.state_dict())
        reference_for(model, RULES[rule], q_lora_rank, True, ids_for(), params=params)
        lambdas = {LAMBDA_NAME} if rule == "residual-learned" else set()
        assert params.read | lambdas == {n for n, _ in model.named_parameters()}


# --- 2. gradients, float64 ----------------------------------------------------------------------


@pytest.mark.parametrize("rule, q_lora_rank, interleave", [
    pytest.param("latent-s3w1", D_Q, True, id="latent-s3w1-dq-interleave"),
    pytest.param("values", None, False, id="values-q-halves"),
    pytest.param("residual-learned", D_Q, False, id="residual-learned-dq-halves"),
    pytest.param("vanilla", None, True, id="vanilla-q-interleave"),
])
def test_every_gradient_matches_the_reference(rule, q_lora_rank, interleave):
    model = build(RULES[rule], q_lora_rank, interleave)
    ids = ids_for(2)
    targets = ids_for(3)
    model.zero_grad()
    logits = model(ids)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    params = {n: t.detach().clone().requires_grad_(True) for n, t in model.state_dict().items()}
    ref = reference_for(model, RULES[rule], q_lora_rank, interleave, ids, logits, params=params)
    assert rel_err(logits, ref.logits) <= REL_FP64
    F.cross_entropy(ref.logits.flatten(0, 1), targets.flatten()).backward()

    for name, p in model.named_parameters():
        assert p.grad is not None and params[name].grad is not None, name
        err = rel_err(p.grad, params[name].grad)
        assert err <= REL_FP64, f"{name}: relative gradient error {err:.3e}"


# --- 3. float32 model vs float64 reference ------------------------------------------------------


@pytest.mark.parametrize("rule, q_lora_rank, interleave", [
    pytest.param("latent-s1", D_Q, True, id="latent-s1-dq-interleave"),
    pytest.param("values-s3w1", None, False, id="values-s3w1-q-halves"),
    pytest.param("residual-learned", None, True, id="residual-learned-q-interleave"),
])
def test_float32_model_is_close_to_the_float64_reference(rule, q_lora_rank, interleave):
    model = build(RULES[rule], q_lora_rank, interleave, dtype=torch.float32)
    ids = ids_for()
    with torch.no_grad():
        logits = model(ids)
    assert logits.dtype == torch.float32
    # the float32 weights, exactly, in float64; the angles in float32 as both libraries do
    ref = reference_for(model, RULES[rule], q_lora_rank, interleave, ids)
    torch.testing.assert_close(logits.double(), ref.logits, rtol=0, atol=ATOL_FP32)


# --- cached decoding equals the reference (§9's last paragraph) ---------------------------------


@pytest.mark.parametrize("rule, cache_class", [
    ("latent-s3w1", "KVCache"), ("values", "StaticKVCache"), ("residual-learned", "KVCache")])
def test_cached_decoding_matches_the_reference(rule, cache_class):
    from depthattn.model import cache as caches

    model = build(RULES[rule], D_Q, False)
    ids = ids_for()
    ref = reference_for(model, RULES[rule], D_Q, False, ids)
    cache = getattr(caches, cache_class).for_model(model, B, T)
    with torch.no_grad():
        logits = [model(ids[:, :3], cache=cache)]  # prefill, then one token per call
        logits += [model(ids[:, t:t + 1], cache=cache) for t in range(3, T)]
    err = rel_err(torch.cat(logits, dim=1), ref.logits)
    assert err <= REL_FP64, f"max relative error {err:.3e}"


# --- every depth-mix implementation mixes entries alike ----------------------------------------


@pytest.mark.parametrize("impl", ["reference", "unstacked", "inference", "triton"])
def test_every_depth_mix_impl_matches_the_reference(impl):
    """The entry mix runs through the depth-mix implementations (docs/depth_mix.md); without a
    GPU the Triton kernel runs in Triton's interpreter (tests/conftest.py). Triton computes in
    float32 only, so it is checked on the float32 model alone."""
    for dtype in ([torch.float32] if impl == "triton" else [torch.float64, torch.float32]):
        for rule in ("latent-s1", "values-s3w1"):
            model = build(RULES[rule], D_Q, True, dtype=dtype)
            model.set_depth_mix_impl(impl)
            ids = ids_for()
            with torch.no_grad():
                logits = model(ids)
            if dtype == torch.float64:
                ref = reference_for(model, RULES[rule], D_Q, True, ids, logits)
                assert rel_err(logits, ref.logits) <= REL_FP64, (impl, rule)
            else:
                ref = reference_for(model, RULES[rule], D_Q, True, ids)
                torch.testing.assert_close(logits.double(), ref.logits, rtol=0, atol=ATOL_FP32,
                                           msg=f"{impl} {rule}")


# --- 4. the depth weights are distributions -----------------------------------------------------


@pytest.mark.parametrize("rule", ["latent-s1", "values-s3w1"])
def test_depth_weights_are_distributions(rule):
    model = build(RULES[rule], D_Q, True)
    ids = ids_for()
    ref = reference_for(model, RULES[rule], D_Q, True, ids)
    L = GEOM["num_layers"]
    assert sorted(ref.alphas) == list(range(1, L))
    for l, alpha in ref.alphas.items():
        assert alpha.shape == (B, T, len(ref.sources[l]) + 1)
        assert (alpha >= 0).all()
        torch.testing.assert_close(alpha.sum(-1), torch.ones(B, T, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        assert alpha.max() < 1 - 1e-6  # no rule degenerates to one candidate here

    # the package's recorded α
    from depthattn import capture_depth_weights

    with capture_depth_weights(model) as rec, torch.no_grad():
        model(ids)
    weights, srcs = rec.weights, rec.sources
    assert sorted(weights) == list(range(1, L))
    for l, w in weights.items():
        assert srcs[l] == ref.sources[l]
        # (B, 1, T, |S(l)| + 1): the one latent "kv head"
        assert w.shape == (B, 1, T, len(ref.sources[l]) + 1), (l, tuple(w.shape))
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-6)
        # recorded as float32 (DepthWeights.record), so float32's resolution
        torch.testing.assert_close(w[:, 0].double(), ref.alphas[l], rtol=0, atol=1e-6)


# --- 5. the tolerance bites: broken references miss the package ---------------------------------


@pytest.mark.parametrize("rule, broken", [
    ("latent-s1", "mix_before_norm"),
    ("latent-s1", "rope_key_unmixed"),
    ("latent-s1", "source_kv_b"),
    ("latent-s1", "no_sigma"),
    ("values-s3w1", "sources_raw_rope_key"),
    ("values-s3w1", "source_kv_b"),
])
def test_broken_references_fail_the_comparison(rule, broken):
    model = build(RULES[rule], D_Q, True)
    ids = ids_for()
    with torch.no_grad():
        logits = model(ids)
        good = reference_for(model, RULES[rule], D_Q, True, ids, logits)
        bad = reference_for(model, RULES[rule], D_Q, True, ids, logits, broken=broken)
    assert rel_err(logits, good.logits) <= REL_FP64
    err = rel_err(logits, bad.logits)
    assert err > REL_BROKEN, f"{BROKEN[broken]}: only {err:.3e} from the package"


# --- the reference's own anchor: vanilla MLA is transformers' DeepseekV3 --------------------------


@pytest.mark.parametrize("q_lora_rank, interleave", [(None, True), (D_Q, False)])
def test_reference_vanilla_equals_transformers_deepseek_v3(q_lora_rank, interleave, monkeypatch):
    """Independent of depthattn: a random dense DeepseekV3 (first_k_dense_replace = L) and the
    reference on its weights. DeepseekV3's RMSNorm rounds through float32 whatever the model's
    dtype (patched here to stay in float64) and its eager attention takes the softmax in
    float32 (SDPA runs here instead): then the two agree to REL_FP64."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    from transformers.models.deepseek_v3 import modeling_deepseek_v3

    def rms_norm_in_float64(self, x):
        return rms_norm(x, self.weight, self.variance_epsilon)

    monkeypatch.setattr(modeling_deepseek_v3.DeepseekV3RMSNorm, "forward", rms_norm_in_float64)
    config = DeepseekV3Config(
        vocab_size=GEOM["vocab_size"], hidden_size=GEOM["hidden_size"],
        intermediate_size=GEOM["intermediate_size"], num_hidden_layers=GEOM["num_layers"],
        num_attention_heads=GEOM["num_heads"], num_key_value_heads=GEOM["num_heads"],
        kv_lora_rank=GEOM["kv_lora_rank"], q_lora_rank=q_lora_rank,
        qk_nope_head_dim=GEOM["qk_nope_head_dim"], qk_rope_head_dim=GEOM["qk_rope_head_dim"],
        v_head_dim=GEOM["v_head_dim"], first_k_dense_replace=GEOM["num_layers"],
        rms_norm_eps=GEOM["rms_norm_eps"], rope_interleave=interleave,
        max_position_embeddings=GEOM["max_seq_len"],
        rope_parameters={"rope_type": "default", "rope_theta": GEOM["rope_theta"]},
        tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(config)
    randomize_(hf, 5)
    hf = hf.double().eval()
    ids = ids_for()
    with torch.no_grad():
        expected = hf(ids).logits
        params = Params(hf.state_dict())
        ref = min((mla_reference(params, ids, Rule("vanilla"), q_lora_rank, interleave, prec)
                   for prec in ROPE_PRECISIONS), key=lambda r: rel_err(r.logits, expected))
        assert rel_err(ref.logits, expected) <= REL_FP64
        assert params.read == {n for n, _ in hf.named_parameters()}
        # the layouts matter: the other one misses by far more
        other = mla_reference(params, ids, Rule("vanilla"), q_lora_rank, not interleave)
        assert rel_err(other.logits, expected) > REL_BROKEN
