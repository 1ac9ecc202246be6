"""Stand-in for transformers' ``tests/generation/test_utils.py``, which its sdist lacks.

``test_modeling_common`` imports ``GenerationTesterMixin`` from it: to inherit it in model
tests, and to check (``test_generation_tester_mixin_inheritance``) that a model that can
generate is tested with it. This one runs no generation test: generation is tested by
``tests/hf/test_hf_generate.py``.
"""


class GenerationTesterMixin:
    """Empty: transformers' generation tests are not part of the sdist."""
