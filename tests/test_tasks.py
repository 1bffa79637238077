"""Every task the config accepts is a row in each layer's table (data, models, engine)."""

from __future__ import annotations

import typing

from vlpdist.config import DataConfig
from vlpdist.config.study import TaskKind
from vlpdist.data.tasks import TASKS as DATA
from vlpdist.engine.setup import TASKS as ENGINE
from vlpdist.metrics import PRIMARY, metric_for
from vlpdist.models.tasks import TASKS as MODELS


def test_every_configurable_task_has_a_row_in_every_layer():
    tasks = set(typing.get_args(typing.get_type_hints(DataConfig)["task"]))
    assert tasks == set(DATA) == set(MODELS) == set(ENGINE)
    # what is fine-tuned is scored: its metric and only its metric exists
    assert {t for t, row in ENGINE.items() if row.tuned} == set(PRIMARY)
    # a study fine-tunes what is tuned, your own JSON-lines kinds among them
    assert set(typing.get_args(TaskKind)) == set(PRIMARY) >= {"answers", "label", "labels"}
    for task, primary in PRIMARY.items():  # the primary metric is one the task's metric reports
        assert primary in metric_for(task).compute()
