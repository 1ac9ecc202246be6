"""metrics.jsonl across a resume: records after the resumed step and a line a kill cut short
are dropped, the rest kept as they were; TensorBoard gets every record and, on a resume, purges
the interrupted run's later events."""

from __future__ import annotations

import json
import sys
import types

import pytest

from depthattn.train.metrics import MetricsLog, read_metrics
from depthattn.train.run_dir import RunDir


class FakeWriter:
    made: list[FakeWriter] = []

    def __init__(self, logdir, purge_step=None):
        self.purge_step, self.scalars, self.flushed = purge_step, [], 0
        FakeWriter.made.append(self)

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def flush(self):
        self.flushed += 1

    def close(self):
        pass


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.made.clear()
    return FakeWriter.made


def test_a_resume_drops_later_records_and_a_cut_line(tmp_path, fake_tensorboard):
    run = RunDir(tmp_path)
    log = MetricsLog(run)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    log.sync()
    log.close()
    with open(run.metrics_file, "a") as f:
        f.write('{"step": 6, "lo')  # the process was killed mid-line
    resumed = MetricsLog(run, resume_step=3)
    resumed.write({"step": 4, "loss": 0.4})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == \
        [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.4)]
    first, second = fake_tensorboard
    assert first.purge_step is None and second.purge_step == 4
    assert ("loss", 0.5, 2) in first.scalars and first.flushed == 1
    assert second.scalars == [("loss", 0.4, 4)]


def test_every_record_is_one_complete_json_line(tmp_path):
    log = MetricsLog(RunDir(tmp_path), tensorboard=False)
    log.write({"step": 1, "skipped": "non-finite loss (nan)", "skipped_steps": 1})
    log.close()
    lines = RunDir(tmp_path).metrics_file.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]
