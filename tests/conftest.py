"""Shared fixtures. No test needs the network: the hub is switched off for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """TOFU and the real-world set: ``$UNLEARNING_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    return Path(os.environ.get("UNLEARNING_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "tofu").is_dir():
        pytest.skip(f"shared TOFU data not found at {path} (set UNLEARNING_SHARED_DATA)")
    return path
