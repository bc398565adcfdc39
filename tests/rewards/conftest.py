"""Every test here leaves the reward registry as it found it (a test that adds a reward uses monkeypatch)."""

import pytest

from r1kit.rewards import REWARDS


@pytest.fixture(autouse=True)
def _registry_unchanged():
    before = dict(REWARDS)
    yield
    changed = dict(REWARDS) != before
    REWARDS.clear()
    REWARDS.update(before)
    assert not changed, "a test changed r1kit.rewards.REWARDS without restoring it"
