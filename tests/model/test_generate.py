"""KV cache and decoding (docs/method.md §4): cached decoding reproduces the full forward, the cache is
vanilla-sized and holds (k_l, ṽ_l), batches with left padding do not mix rows, and generate()
agrees with a plain argmax loop over full forwards."""

from __future__ import annotations

import pytest
import torch

from depthattn import KVCache, generate
from tests.model.reference_model import closest_reference

ATOL = 1e-5

METHODS = [
    pytest.param("vanilla", {}, id="vanilla"),
    pytest.param("depth_attention", {}, id="depth-default"),
    pytest.param("depth_attention", {"stride": 1}, id="depth-s1"),
    pytest.param("depth_attention", {"stride": 2, "recent_window": 1}, id="depth-s2w1"),
]
GROUPS = [pytest.param(4, id="G1"), pytest.param(2, id="G2"), pytest.param(1, id="G4")]
K_NORM = ["before_rope", "after_rope"]


def run_in_chunks(model, ids, sizes, attention_mask=None, max_len=None):
    """Feed ``ids`` through a fresh cache in chunks of the given sizes; concatenated logits."""
    B, T = ids.shape
    assert sum(sizes) == T
    cache = KVCache.for_model(model, B, max_len or T)
    out, start = [], 0
    for size in sizes:
        mask = None if attention_mask is None else attention_mask[:, :start + size]
        out.append(model(ids[:, start:start + size], attention_mask=mask, cache=cache))
        start += size
    assert cache.length == T
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("k_norm_position", K_NORM)
@pytest.mark.parametrize("num_kv_heads", GROUPS)
def test_token_by_token_decoding_equals_full_forward(make_model, make_ids, method, options,
                                                     k_norm_position, num_kv_heads):
    model = make_model(seed=1, method=method, method_options=options,
                       k_norm_position=k_norm_position, num_kv_heads=num_kv_heads)
    ids = make_ids(2, 12, seed=3)
    with torch.no_grad():
        full = model(ids)
        stepped, _ = run_in_chunks(model, ids, [4] + [1] * 8, max_len=20)
    torch.testing.assert_close(stepped, full, rtol=0, atol=ATOL)


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("sizes", [[3, 2, 4, 1, 2], [1] * 12, [12], [5, 7]])
def test_chunked_prefill_equals_full_forward(make_model, make_ids, method, options, sizes):
    model = make_model(seed=2, method=method, method_options=options)
    ids = make_ids(3, 12, seed=4)
    with torch.no_grad():
        full = model(ids)
        chunked, _ = run_in_chunks(model, ids, sizes)
    torch.testing.assert_close(chunked, full, rtol=0, atol=ATOL)


def test_decoding_check_is_sensitive(make_model, make_ids):
    """Guard: if the cache kept the raw value instead of ṽ (the authors' HF path, docs/method.md §6),
    decoding would differ from the full forward; emulate that by overwriting the cached
    values of layers ≥ 1 with the vanilla model's raw values and watch the logits move."""
    depth = make_model(seed=1, method="depth_attention", method_options={"stride": 1})
    vanilla = make_model(seed=1)
    ids = make_ids(1, 8, seed=5)
    with torch.no_grad():
        full = depth(ids)
        _, depth_cache = run_in_chunks(depth, ids[:, :7], [7], max_len=8)
        _, raw_cache = run_in_chunks(vanilla, ids[:, :7], [7], max_len=8)
        for layer in range(1, 6):
            depth_cache.values[layer].copy_(raw_cache.values[layer])
        wrong = depth(ids[:, 7:], cache=depth_cache)
    assert (wrong[:, -1] - full[:, -1]).abs().max() > 1e-3


# --- padding and batching -------------------------------------------------------------------


def left_padded(seqs, pad_id=0):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, T - len(seq):] = torch.tensor(seq)
        mask[row, T - len(seq):] = 1
    return ids, mask


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("num_kv_heads", GROUPS)
@pytest.mark.parametrize("k_norm_position", K_NORM)
def test_left_padded_batch_equals_each_sequence_alone(make_model, make_ids, method, options,
                                                      num_kv_heads, k_norm_position):
    """With k_norm after RoPE the depth scores depend on absolute positions (docs/method.md §6), so this
    also checks that a row's positions count from its first real token."""
    model = make_model(seed=3, method=method, method_options=options, num_kv_heads=num_kv_heads,
                       k_norm_position=k_norm_position)
    lengths = [5, 9, 7, 1]
    seqs = [make_ids(1, n, seed=10 + i)[0].tolist() for i, n in enumerate(lengths)]
    continuation = make_ids(4, 3, seed=20)  # three decoding steps for every row
    ids, mask = left_padded(seqs, pad_id=77)
    T = ids.shape[1]
    with torch.no_grad():
        alone = [model(torch.tensor([s + continuation[i].tolist()])) for i, s in enumerate(seqs)]
        # one full forward over the padded batch
        batch = model(ids, attention_mask=mask)
        # prefill the padded batch into a cache (in two chunks), then decode three tokens
        cache = KVCache.for_model(model, 4, T + 3)
        prefill = torch.cat([model(ids[:, :4], attention_mask=mask[:, :4], cache=cache),
                             model(ids[:, 4:], attention_mask=mask, cache=cache)], dim=1)
        steps = []
        step_mask = mask
        for t in range(3):
            step_mask = torch.cat([step_mask, torch.ones(4, 1, dtype=torch.long)], dim=1)
            steps.append(model(continuation[:, t:t + 1], attention_mask=step_mask, cache=cache))
        steps = torch.cat(steps, dim=1)
    for row, n in enumerate(lengths):
        expected = alone[row][0]
        torch.testing.assert_close(batch[row, T - n:], expected[:n], rtol=0, atol=ATOL)
        torch.testing.assert_close(prefill[row, T - n:], expected[:n], rtol=0, atol=ATOL)
        torch.testing.assert_close(steps[row], expected[n:], rtol=0, atol=ATOL)


def test_rows_do_not_depend_on_their_batch_mates(make_model, make_ids):
    model = make_model(seed=4, method="depth_attention", method_options={"stride": 1})
    a = make_ids(3, 8, seed=30)
    b = a.clone()
    b[1:] = make_ids(2, 8, seed=31)  # same row 0, different companions
    with torch.no_grad():
        torch.testing.assert_close(model(a)[0], model(b)[0], rtol=0, atol=ATOL)


# --- what the cache holds ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_cache_is_exactly_vanilla_sized(make_model, dtype, num_kv_heads):
    L, B, max_len, d = 6, 3, 40, 16
    sizes = {}
    for method, options in [("vanilla", {}), ("depth_attention", {"stride": 1}),
                            ("depth_attention", {})]:
        model = make_model(method=method, method_options=options, num_kv_heads=num_kv_heads)
        cache = KVCache.for_model(model, B, max_len, dtype=dtype)
        sizes[(method, tuple(options))] = cache.nbytes
    element = torch.empty((), dtype=dtype).element_size()
    assert set(sizes.values()) == {2 * L * B * num_kv_heads * max_len * d * element}, sizes


def test_cache_length_counts_written_tokens(make_model, make_ids):
    model = make_model(method="depth_attention")
    cache = KVCache.for_model(model, 2, 10)
    assert cache.length == 0
    with torch.no_grad():
        model(make_ids(2, 4), cache=cache)
        assert cache.length == 4
        model(make_ids(2, 1), cache=cache)
    assert cache.length == 5


@pytest.mark.parametrize("k_norm_position", K_NORM)
def test_cache_holds_keys_and_mixed_values(make_model, make_ids, k_norm_position):
    """Layer l's buffers hold (k_l, ṽ_l) exactly as the float64 reference computes them."""
    model = make_model(seed=5, dtype=torch.float64, method="depth_attention",
                       method_options={"stride": 2, "recent_window": 1},
                       k_norm_position=k_norm_position)
    ids = make_ids(2, 7, seed=6)
    with torch.no_grad():
        logits, cache = run_in_chunks(model, ids, [3, 1, 3], max_len=9)
    ref = closest_reference(model.config, model.state_dict(), ids, logits)
    for layer in range(6):
        torch.testing.assert_close(cache.keys[layer][:, :, :7], ref.keys[layer], rtol=0,
                                   atol=1e-10, msg=f"keys of layer {layer}")
        torch.testing.assert_close(cache.values[layer][:, :, :7], ref.values[layer], rtol=0,
                                   atol=1e-10, msg=f"values of layer {layer}")


def test_depth_cache_differs_from_vanilla_only_where_it_should(make_model, make_ids):
    """Same weights: layer 0's keys and values are identical (layer 0 has no sources, its value
    is the raw v_proj output); from layer 1 on the values are the mixed ones."""
    depth = make_model(seed=6, method="depth_attention", method_options={"stride": 1})
    vanilla = make_model(seed=6)
    ids = make_ids(2, 6, seed=7)
    raw = {}

    def keep(layer):
        def hook(module, inputs, output):
            raw[layer] = output.view(2, 6, 2, 16).transpose(1, 2)  # (B, H_kv, T, d)
        return hook

    handles = [depth.model.layers[i].self_attn.v_proj.register_forward_hook(keep(i))
               for i in range(6)]
    try:
        with torch.no_grad():
            _, dc = run_in_chunks(depth, ids, [6])
            _, vc = run_in_chunks(vanilla, ids, [6])
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(dc.keys[0], vc.keys[0], rtol=0, atol=0)
    torch.testing.assert_close(dc.values[0], vc.values[0], rtol=0, atol=0)
    torch.testing.assert_close(dc.values[0], raw[0], rtol=0, atol=0)
    for layer in range(1, 6):
        assert (dc.values[layer] - raw[layer]).abs().max() > 1e-3, layer
        assert (dc.values[layer] - vc.values[layer]).abs().max() > 1e-3, layer


# --- generate() --------------------------------------------------------------------------------


def greedy_by_full_forwards(model, ids, mask, steps):
    """The obvious loop: rerun the whole sequence each step, append the argmax."""
    ids, mask = ids.clone(), mask.clone()
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, attention_mask=mask)[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("chunk", [None, 2])
def test_greedy_generate_equals_argmax_loop(make_model, make_ids, method, options, chunk):
    model = make_model(seed=7, method=method, method_options=options)
    seqs = [make_ids(1, n, seed=40 + n)[0].tolist() for n in (6, 3)]
    ids, mask = left_padded(seqs)
    expected = greedy_by_full_forwards(model, ids, mask, 8)
    got = generate(model, ids, attention_mask=mask, max_new_tokens=8, prefill_chunk_size=chunk)
    assert torch.equal(got, expected)


def test_max_new_tokens_is_respected(make_model, make_ids):
    model = make_model(seed=8, method="depth_attention")
    ids = make_ids(2, 5, seed=9)
    for n in (1, 4, 9):
        out = generate(model, ids, max_new_tokens=n)
        assert out.shape == (2, 5 + n)
        assert torch.equal(out[:, :5], ids)


def test_eos_stops_generation(make_model, make_ids):
    model = make_model(seed=9, method="depth_attention", method_options={"stride": 1})
    ids = make_ids(1, 5, seed=11)
    free = generate(model, ids, max_new_tokens=12)[0, 5:].tolist()
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # first fresh token ≥ 1
    out = generate(model, ids, max_new_tokens=12, eos_token_id=free[k])
    assert out[0, 5:].tolist() == free[:k + 1]


def test_finished_rows_are_padded_while_others_continue(make_model, make_ids):
    model = make_model(seed=10, method="depth_attention")
    ids = make_ids(2, 5, seed=12)
    free = generate(model, ids, max_new_tokens=10)
    row0, row1 = free[0, 5:].tolist(), free[1, 5:].tolist()
    candidates = [i for i in range(len(row0) - 1) if row0[i] not in row0[:i] + row1]
    if not candidates:
        pytest.skip("no token ends row 0 alone with these weights")
    k = candidates[0]
    out = generate(model, ids, max_new_tokens=10, eos_token_id=row0[k], pad_token_id=127)
    assert out.shape == (2, 15)
    assert out[0, 5:].tolist() == row0[:k + 1] + [127] * (10 - k - 1)
    assert out[1, 5:].tolist() == row1


def test_sampling_is_reproducible_with_a_seeded_generator(make_model, make_ids):
    model = make_model(seed=11, method="depth_attention")
    ids = make_ids(2, 4, seed=13)

    def sample(seed):
        return generate(model, ids, max_new_tokens=12, do_sample=True, temperature=1.5,
                        top_p=0.95, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    greedy = generate(model, ids, max_new_tokens=12)
    assert not torch.equal(sample(0), greedy)


@pytest.mark.parametrize("kwargs", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, top_p=0.5),
                                    dict(temperature=1e-4)])
def test_degenerate_sampling_equals_greedy(make_model, make_ids, kwargs):
    model = make_model(seed=12, method="depth_attention", method_options={"stride": 1})
    ids = make_ids(2, 4, seed=14)
    greedy = generate(model, ids, max_new_tokens=10)
    sampled = generate(model, ids, max_new_tokens=10, do_sample=True,
                       generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(sampled, greedy)


def test_logits_to_keep_gives_the_last_positions_of_the_full_logits(make_model, make_ids):
    model = make_model(seed=2)
    ids = make_ids(2, 9)
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_to_keep=1), full[:, -1:], rtol=0, atol=ATOL)
        torch.testing.assert_close(model(ids, logits_to_keep=4), full[:, -4:], rtol=0, atol=ATOL)
        torch.testing.assert_close(model(ids, logits_to_keep=0), full, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"logits_to_keep \(-1\) must be an integer >= 0"):
        model(ids, logits_to_keep=-1)
