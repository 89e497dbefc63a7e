"""Airflow connection forms (URI and JSON) -> the engine's Connection; secrets never in repr."""

from __future__ import annotations

import json

import pytest
from mls_sync.connections import ConnectionNotFound, from_env


def test_json_form_with_full_url_in_host() -> None:
    env = {"AIRFLOW_CONN_MLS_X": json.dumps({"conn_type": "http", "host": "https://rets.example.com/rets/login",
                                              "login": "u", "password": "s3cret",
                                              "extra": {"ua_password": "uapw", "user_agent": "A/1"}})}
    c = from_env("mls_x", env)
    assert c.url() == "https://rets.example.com/rets/login"
    assert c.login == "u" and c.extra["user_agent"] == "A/1"
    assert "s3cret" not in repr(c) and "uapw" not in repr(c)
    assert set(c.secret_values()) == {"s3cret", "uapw"}


def test_uri_form_rebuilds_url() -> None:
    env = {"AIRFLOW_CONN_MLS_Y": "https://user:p%40ss@mls.example.com:8443/rets/login?rets_version=RETS%2F1.8"}
    c = from_env("mls_y", env)
    assert c.password == "p@ss" and c.extra["rets_version"] == "RETS/1.8"
    assert c.url() == "https://mls.example.com:8443/rets/login"


def test_missing_connection_says_how_to_define_it() -> None:
    with pytest.raises(ConnectionNotFound, match="AIRFLOW_CONN_NOPE"):
        from_env("nope", {})
