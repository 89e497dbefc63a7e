"""A bench step in a child process of its own, reporting one JSON line back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any


def run_module(module: str, args: list[str], mark: str, what: str, *, env: Mapping[str, str] | None = None,
               timeout: float = 1800, on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """`python -m MODULE ARGS`; returns the JSON after `mark` on its stdout. `on_start(pid)` lets a
    monitor name the process; a failure or timeout raises with the end of its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if on_start is not None:
        on_start(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what} timed out after {timeout:.0f} s") from None
    for line in out.splitlines():
        if line.startswith(mark):
            return json.loads(line[len(mark):])
    raise RuntimeError(f"{what} failed (exit {proc.returncode}): {err.strip()[-1500:]}")
