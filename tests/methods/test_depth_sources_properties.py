"""Property: the depth-source rule S(l) = { j < l : j mod s == 0 or j >= l - w } gives every
layer an ordered set of earlier layers, always containing layer 0 (for l >= 1), and the model
built from it reads exactly those layers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from depthattn.methods.depth_attention import depth_sources


@given(layer=st.integers(0, 200), stride=st.integers(1, 64), window=st.integers(0, 64))
def test_sources_are_ordered_earlier_layers_with_layer_zero(layer, stride, window):
    sources = depth_sources(layer, stride, window)
    assert sources == sorted(set(sources))  # ascending, no repeats
    assert all(0 <= j < layer for j in sources)
    assert (0 in sources) == (layer >= 1)
    assert set(range(max(0, layer - window), layer)) <= set(sources)  # the recent window
    assert {j for j in range(layer) if j % stride == 0} <= set(sources)
    assert all(j % stride == 0 or j >= layer - window for j in sources)


@given(layers=st.integers(1, 12), stride=st.integers(1, 12), window=st.integers(0, 12))
def test_the_module_reads_the_rule_and_stashes_only_layers_read_later(layers, stride, window):
    from depthattn import CausalLM
    from tests.conftest import tiny_config

    config = tiny_config(num_layers=layers, method="depth_attention",
                         method_options={"stride": stride, "recent_window": window})
    method = CausalLM(config).model.cross_layer
    assert method.sources == [depth_sources(l, stride, window) for l in range(layers)]
    assert method.read_later == {j for s in method.sources for j in s}
