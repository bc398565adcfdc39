"""Data for r1kit: record files, chat and task datasets, synthetic tasks and a pretraining corpus."""

from r1kit.data.records import read_records

__all__ = ["read_records"]
