"""Dialogue fixtures: a built episode file of the synthetic conversations of tests/dialogue/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dialogue.helpers import topic_episodes, write_episodes


@pytest.fixture(scope="session")
def topic_file(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("dialogue") / "topics.jsonl", topic_episodes(400))
