"""transformers' generic model tests (``ModelTesterMixin``, ``ConfigTester``) on
``DepthAttnForCausalLM``: the battery every Hugging Face model passes, from the sdist of the
installed transformers (``tests/hf/transformers_suite.py``), for a tiny model of each kind:
vanilla, Depth-Attention, a residual-stream baseline and a looped model. ``Qwen3ForCausalLM``
with the same geometry runs the same battery as the control: a test that fails for it too
is the battery's (this environment's), not ours.

What the battery cannot know about a model outside transformers is told to it here, as a
model's own test file in transformers does: that ``DepthAttnForCausalLM`` is a causal LM (its
name tables list transformers' own classes only), how many hidden states a looped model
returns. A test that does not apply is skipped
with its reason (``NOT_APPLICABLE``); a known gap is an expected failure (``KNOWN_GAPS``,
strict: a test that starts passing fails until its entry is removed).
"""

from __future__ import annotations

import contextlib
import functools
import unittest
from typing import ClassVar
from unittest import mock

import pytest
import torch

from tests.hf.transformers_suite import SuiteUnavailable, load

try:
    common, configuration = load()
except SuiteUnavailable as e:
    pytest.skip(f"transformers' test battery is unavailable: {e}", allow_module_level=True)

from transformers import (
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForQuestionAnswering,
    Qwen3ForSequenceClassification,
    Qwen3ForTokenClassification,
    Qwen3Model,
)

from depthattn.hf import (
    DepthAttnConfig,
    DepthAttnForCausalLM,
    DepthAttnForQuestionAnswering,
    DepthAttnForSequenceClassification,
    DepthAttnForTokenClassification,
    DepthAttnModel,
)

ModelTesterMixin = common.ModelTesterMixin
GenerationTesterMixin = common.GenerationTesterMixin  # our stand-in (no generation tests)
ConfigTester = configuration.ConfigTester
ids_tensor = common.ids_tensor
torch_device = common.torch_device

# The tiny geometry of transformers' causal-LM testers; 4 query heads share 2 kv heads.
GEOMETRY = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 37,
            "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2}

# depthattn models, by name: DepthAttnConfig fields over GEOMETRY. Depth-Attention gets 4
# layers (stride L // 2 = 2: layer 3's sources are layers 0 and 2, a subset of those below it,
# where 2 layers would give layer 1 the one layer below it); the looped model a prelude, a
# block of one layer applied twice and a coda (L_eff = 4).
KINDS = {
    "vanilla": {"method": "vanilla"},
    "depth_attention": {"method": "depth_attention", "num_hidden_layers": 4},
    "hyper_connections": {"method": "hyper_connections"},
    "looped": {"method": "vanilla", "num_hidden_layers": 3, "prelude_layers": 1,
               "loop_layers": 1, "loop_iterations": 2},
    # multi-head latent attention (docs/method.md §9), Depth-Attention's latent rule
    "mla_depth_attention": {"method": "depth_attention", "num_hidden_layers": 4,
                            "attention": "mla", "num_key_value_heads": 4, "kv_lora_rank": 16,
                            "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8},
}

# Tests that do not apply, with the reason: to every kind ("*") or to one.
DEEPER = "transformers caps its testers at 2 layers for its CI's time; this kind needs more"
SCALED_ROPE = ("MLA models refuse scaled RoPE (docs/method.md §9): DeepseekV3's yarn also "
               "rescales the attention scale, which is not modelled")
NOT_APPLICABLE = {
    "*": {},
    "depth_attention": {
        "test_num_layers_is_small": DEEPER,
        "test_training_gradient_checkpointing_use_reentrant_true":
            "use_reentrant=True is refused by design: Depth-Attention's sources reach later "
            "layers outside the checkpointed arguments, whose gradients it would drop"},
    "mla_depth_attention": {
        **{f"test_model_rope_scaling_from_config_{i}_{kind}": SCALED_ROPE
           for i, kind in enumerate(("linear", "dynamic", "yarn"))},
        "test_num_layers_is_small": DEEPER,
        "test_training_gradient_checkpointing_use_reentrant_true":
            "use_reentrant=True is refused by design: Depth-Attention's sources reach later "
            "layers outside the checkpointed arguments, whose gradients it would drop"},
    "looped": {
        "test_num_layers_is_small": DEEPER,
        "test_attention_outputs":
            "counts attention maps by num_hidden_layers (3), while a looped model applies its "
            "layers L_eff = 4 times and returns one map per application"},
}
# Known gaps of our models against transformers' conventions: expected failures (strict).
KNOWN_GAPS: dict[str, str] = {}


# transformers' tables of in-tree model classes, in the order of ``model_classes``
TABLES = ("MODEL_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
          "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
          "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
          "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES")


class TinyCausalLMTester:
    """A tiny config and random inputs, what ``ModelTesterMixin`` asks of ``model_tester``
    (the part of transformers' causal-LM tester that its sdist lacks)."""

    batch_size = 13
    seq_length = 7
    is_training = True

    def __init__(self, parent: unittest.TestCase, config_class: type, config_kwargs: dict):
        self.parent = parent
        self.config_class = config_class
        self.config_kwargs = {**GEOMETRY, **config_kwargs}
        self.vocab_size = self.config_kwargs["vocab_size"]
        self.hidden_size = self.config_kwargs["hidden_size"]
        self.num_hidden_layers = self.config_kwargs["num_hidden_layers"]
        self.num_attention_heads = self.config_kwargs["num_attention_heads"]
        # the embeddings' output and one state per layer application (L_eff of a looped model)
        self.expected_num_hidden_layers = \
            getattr(self.get_config(), "num_applications", self.num_hidden_layers) + 1

    def get_config(self):
        return self.config_class(**self.config_kwargs)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        # rows with 1..seq_length real tokens, then padding (right-padded)
        attention_mask = torch.tril(torch.ones_like(input_ids)).to(torch_device)
        labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        return self.get_config(), input_ids, attention_mask, labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class Battery(ModelTesterMixin, GenerationTesterMixin):
    """The battery for one model class and config; subclasses set the three below."""

    model_class: type
    config_class: type
    config_kwargs: ClassVar[dict] = {}
    # the battery skips this test for models older than 2023 (by their file's copyright year)
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.all_model_classes = self.model_classes
        self.model_tester = TinyCausalLMTester(self, self.config_class, self.config_kwargs)
        self.config_tester = ConfigTester(self, config_class=self.config_class)
        if self.model_class.__name__ not in common.get_values(
                common.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
            # the battery knows a model's kind by its class name in transformers' tables of
            # in-tree models (base models are not trained; each head gets its labels): ours are
            # registered with the Auto classes instead, so they are added for the test
            for table, model_class in zip(TABLES, self.model_classes):
                names = mock.patch.dict(getattr(common, table),
                                        {self.config_class.model_type: model_class.__name__})
                names.start()
                self.addCleanup(names.stop)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        config, input_ids, attention_mask, labels = self.model_tester.prepare_config_and_inputs()
        model = self.model_class(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(input_ids, attention_mask=attention_mask, labels=labels)
        tester = self.model_tester
        self.assertEqual(result.logits.shape,
                         (tester.batch_size, tester.seq_length, tester.vocab_size))
        self.assertTrue(torch.isfinite(result.loss))


class Qwen3BatteryTest(Battery, unittest.TestCase):
    """The control: transformers' own Qwen3 with the same geometry."""

    model_class = Qwen3ForCausalLM
    model_classes = (Qwen3Model, Qwen3ForCausalLM, Qwen3ForSequenceClassification,
                     Qwen3ForTokenClassification, Qwen3ForQuestionAnswering)
    config_class = Qwen3Config


def _marked(cls: type, name: str, mark: pytest.MarkDecorator, whole: bool = False) -> None:
    """``cls.name`` with ``mark``, leaving the mixin's function (shared by every class) as is.
    ``whole``: its ``subTest`` blocks are not reported apart (an expected failure is the
    test's, not a subtest's: pytest would count the test itself as an unexpected pass).
    A name this transformers version's battery lacks is passed over."""
    inherited = getattr(cls, name, None)
    if inherited is None:
        return

    @functools.wraps(inherited)
    def test(self, *args, **kwargs):
        if whole:
            self.subTest = lambda *_, **__: contextlib.nullcontext()
        return inherited(self, *args, **kwargs)

    setattr(cls, name, mark(test))


def _depthattn_test(kind: str) -> type:
    name = "DepthAttn" + "".join(part.title() for part in kind.split("_")) + "BatteryTest"
    cls = type(name, (Battery, unittest.TestCase), {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"DepthAttnForCausalLM, {kind}: {KINDS[kind]}",
        "model_class": DepthAttnForCausalLM, "config_class": DepthAttnConfig,
        "model_classes": (DepthAttnModel, DepthAttnForCausalLM,
                          DepthAttnForSequenceClassification, DepthAttnForTokenClassification,
                          DepthAttnForQuestionAnswering),
        "config_kwargs": KINDS[kind]})
    for test, reason in {**NOT_APPLICABLE["*"], **NOT_APPLICABLE.get(kind, {})}.items():
        _marked(cls, test, pytest.mark.skip(reason=reason))
    for test, reason in KNOWN_GAPS.items():
        _marked(cls, test, pytest.mark.xfail(reason=reason, strict=True), whole=True)
    return cls


for _kind in KINDS:
    _cls = _depthattn_test(_kind)
    globals()[_cls.__name__] = _cls
del _kind, _cls
