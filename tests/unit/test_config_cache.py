"""Provider configs cached on disk between processes: used while a YAML is unchanged, never trusted
from a place others can write, never stale after an edit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mls_sync import config, config_cache

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "include" / "mappings"


@pytest.fixture
def mappings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "mappings"
    d.mkdir()
    shutil.copy(MAPPINGS / "demo_rets.yaml", d / "demo_rets.yaml")
    monkeypatch.setenv(config_cache.ENV_VAR, str(tmp_path / "cache"))
    config._load_all.cache_clear()
    return d


def _loads(mappings: Path) -> int:
    """How many YAMLs a fresh process had to read and validate to list the providers."""
    code = ("import sys; from mls_sync import config; n = [0]; real = config.load_provider\n"
            "def counting(p):\n    n[0] += 1\n    return real(p)\n"
            "config.load_provider = counting\n"
            f"print([type(c).__name__ for _, c in config.load_providers({str(mappings)!r})]); print(n[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=60, check=True).stdout.split("\n")
    return int(out[1])


def test_a_second_process_reads_no_unchanged_yaml(mappings: Path) -> None:
    assert _loads(mappings) == 1
    assert _loads(mappings) == 0  # validated config from the cache
    data = yaml.safe_load((mappings / "demo_rets.yaml").read_text())
    data["name"] = "Renamed"
    (mappings / "demo_rets.yaml").write_text(yaml.safe_dump(data))
    assert _loads(mappings) == 1  # edited: read again
    (found,) = config.load_providers(mappings)
    assert found[1].name == "Renamed"


def test_broken_yaml_errors_are_cached_and_said_the_same(mappings: Path) -> None:
    (mappings / "broken.yaml").write_text("provider_id: broken\nfields: [\n")
    first = [str(c) for _, c in config.load_providers(mappings) if isinstance(c, config.ConfigError)]
    config._load_all.cache_clear()
    assert _loads(mappings) == 0
    again = [str(c) for _, c in config.load_providers(mappings) if isinstance(c, config.ConfigError)]
    assert first == again and "not valid YAML" in first[0]


def test_a_cache_others_can_write_is_never_read(mappings: Path, tmp_path: Path) -> None:
    assert _loads(mappings) == 1
    (tmp_path / "cache").chmod(0o777)  # anyone could have planted the pickle
    assert config_cache.cache_dir() is None
    assert _loads(mappings) == 1
    (tmp_path / "cache").chmod(0o700)
    for f in (tmp_path / "cache").glob("*.pickle"):
        f.chmod(0o666)
        assert config_cache.read(mappings) == {}


def test_a_damaged_cache_is_ignored(mappings: Path, tmp_path: Path) -> None:
    assert _loads(mappings) == 1
    for f in (tmp_path / "cache").glob("*.pickle"):
        f.write_bytes(b"not a pickle")
    assert _loads(mappings) == 1
    assert _loads(mappings) == 0
