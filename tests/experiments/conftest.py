"""The training tests' tiny prepared corpus and tiny config serve the experiments too."""

from tests.train.conftest import prepared_corpus, tiny_train_config  # noqa: F401
