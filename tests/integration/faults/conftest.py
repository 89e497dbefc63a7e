"""Fixtures of the fault suite: `world(**mock settings)` -> a `World` with its own mock MLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.faults.harness import World


@pytest.fixture
def world(mock_mls_factory: Any, db: Any, db_url: str, tmp_path: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., World]]:
    """Build the test's world; this process sees the same connections and YAMLs as its children."""
    made: list[World] = []

    def make(**mock: Any) -> World:
        mock.setdefault("control", True)
        w = World(mls=mock_mls_factory(**mock), db=db, db_url=db_url, tmp=tmp_path)
        for key in ("MLS_MAPPINGS_DIR", "MLS_MEDIA_STORAGE", "MLS_DATABASE_URL", "AIRFLOW_CONN_MLS_DEMO_RETS",
                    "AIRFLOW_CONN_MLS_DEMO_RESO"):
            monkeypatch.setenv(key, w.env[key])
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop_all()
