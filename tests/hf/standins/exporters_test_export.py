"""Stand-in for transformers' ``tests/exporters/test_export.py``, which its sdist lacks.

``ModelTesterMixin`` derives from its ``ExportTesterMixin``; this one adds no export test.
"""


class ExportTesterMixin:
    """Empty: transformers' export tests are not part of the sdist."""
