import os

# Offline and quiet, before anything imports transformers / prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One cache of tiny models per test session (each builds in well under a second)."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def pair_same(tiny_cache):
    from pilot_core.tiny_models import tiny_pair

    return tiny_pair("same", cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def pair_different(tiny_cache):
    from pilot_core.tiny_models import tiny_pair

    return tiny_pair("different", cache_dir=tiny_cache)
