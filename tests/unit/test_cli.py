"""The CLI's parser and error handling without a server (the integration tests cover the rest)."""

from __future__ import annotations

import pytest
from mls_sync import cli


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_subcommands_and_aliases() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["search", "--provider", "demo_rets", "--filter", "(LIST_15=|ACT)", "--limit", "3"])
    assert args.query == "(LIST_15=|ACT)" and args.limit == 3 and args.handler is cli.cmd_search
    for name in ("check", "metadata", "search", "photos"):
        assert name in parser.format_help()
    assert "sync" not in [a.dest for a in parser._actions]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run([], capsys)[0] == 2
    code, _, err = run(["check"], capsys)
    assert code == 2 and "--provider" in err and "Traceback" not in err
    code, _, err = run(["check", "--provider", "no_such_provider"], capsys)
    assert code == 2 and "no provider" in err
    monkeypatch.delenv("AIRFLOW_CONN_MLS_DEMO_RETS", raising=False)
    code, _, err = run(["check", "--provider", "demo_rets"], capsys)
    assert code == 2 and "AIRFLOW_CONN_MLS_DEMO_RETS" in err
    code, _, err = run(["check", "--login-url", "http://x/login"], capsys)
    assert code == 2 and "--username" in err
    code, _, err = run(["search", "--login-url", "http://127.0.0.1:9/l", "--username", "u", "--password", "p",
                        "--since", "yesterday"], capsys)
    assert code == 2 and "ISO timestamp" in err
    # --attempts is checked the same way with or without a YAML (0 was silently ignored here)
    code, _, err = run(["check", "--login-url", "http://127.0.0.1:9/l", "--username", "u", "--password", "p",
                        "--attempts", "0"], capsys)
    assert code == 2 and err.startswith("mls-sync: --attempts 0: Input should be greater than or equal to 1")


def test_dead_port_exits_4_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", "--login-url", "http://127.0.0.1:9/rets/login", "--username", "u",
                        "--password", "secret-pw", "--attempts", "1"], capsys)
    assert code == 4 and err.startswith("mls-sync: server or network error") and "secret-pw" not in err
    assert err.count("\n") == 1
