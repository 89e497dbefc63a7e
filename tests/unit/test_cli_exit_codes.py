"""`mls-sync`: each engine error is one line on stderr and the exit code docs/CLI.md gives it."""

from __future__ import annotations

import pytest
from mls_sync import cli
from mls_sync.config import ConfigError
from mls_sync.lease import RunConflict
from mls_sync.objectstore import ObjectStoreError
from sqlalchemy.exc import OperationalError


@pytest.mark.parametrize("exc, code, starts", [
    (RunConflict("demo_rets is being synced by run X (DAG mls_sync__demo_rets) since ..."), 5,
     "mls-sync: demo_rets is being synced by run X"),
    (OperationalError("INSERT ...", {}, Exception("terminating connection due to administrator command\nDETAIL")), 6,
     "mls-sync: database error: terminating connection due to administrator command"),
    (ConfigError("x.yaml: invalid provider config (1 problem(s)):\n  - storage: ..."), 2,
     "mls-sync: x.yaml: invalid provider config"),
    (ObjectStoreError("PutObject failed: SlowDown"), 4, "mls-sync: photo storage error: PutObject"),
    (KeyError("LIST_1"), 1, "mls-sync: unexpected error (a bug; -v shows where): KeyError"),
])
def test_engine_errors_are_one_line_with_their_exit_code(exc: Exception, code: int, starts: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._engine_failure(exc) == code
    err = capsys.readouterr().err
    assert err.startswith(starts) and err.count("\n") == 1 and "Traceback" not in err


def test_a_database_error_never_shows_the_database_password(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLS_DATABASE_URL", "postgresql://sync:hunter2secret@db.example:5432/mls")
    orig = Exception('connection to server at "db.example" failed: password hunter2secret rejected')
    assert cli._engine_failure(OperationalError("SELECT 1", {}, orig)) == cli.EXIT_DATABASE
    err = capsys.readouterr().err
    assert "hunter2secret" not in err and "***" in err
