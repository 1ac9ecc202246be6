"""Stand-in for transformers' ``tests/utils/test_configuration_utils.py``, which its sdist lacks.

``ConfigTester.check_config_arguments_init`` builds the config under test with
``config_common_kwargs`` and checks that each one is set as given: keyword arguments every
``PreTrainedConfig`` takes, each with a value other than its default.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",  # checked as torch.float16
    "chunk_size_feed_forward": 5,
    "architectures": ["SomeModel"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}
