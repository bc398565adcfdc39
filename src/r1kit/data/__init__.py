"""Data for r1kit: record files, chat and task datasets, synthetic tasks and a pretraining corpus."""

from r1kit.data.corpus import LAYOUTS, synthetic_corpus
from r1kit.data.loaders import FieldMap, RowError, load_chat_dataset, load_task_dataset
from r1kit.data.records import read_records
from r1kit.data.tasks import TASKS, Task, check_countdown, make_task_set, split_of

__all__ = [
    "LAYOUTS",
    "TASKS",
    "FieldMap",
    "RowError",
    "Task",
    "check_countdown",
    "load_chat_dataset",
    "load_task_dataset",
    "make_task_set",
    "read_records",
    "split_of",
    "synthetic_corpus",
]
