"""The marks that transformers' test battery (test_transformers_suite.py) puts on its tests,
registered so that pytest takes them for marks rather than typos."""

BATTERY_MARKS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test",
                 "flash_attn_4_test", "torch_compile_test")


def pytest_configure(config):
    for name in BATTERY_MARKS:
        config.addinivalue_line("markers", f"{name}: a mark of transformers' test battery")
