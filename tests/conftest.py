"""Session-wide test setup: converted models go to a temporary cache, never the user's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point FEDLM_CACHE_DIR at a temporary folder for the whole session, then restore it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDLM_CACHE_DIR", str(tmp_path_factory.mktemp("fedlm-cache")))
        yield
