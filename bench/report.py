"""The readable table and the JSON files."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = round(psutil.virtual_memory().total / 2**30, 1)
    return {"cpus": psutil.cpu_count(), "cpu_model": model, "memory_gb": mem,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _rate(r: dict[str, Any]) -> str:
    if r.get("photos_per_second") is not None:
        return f"{r['photos_per_second']:,.1f} ph/s"
    if r.get("records_per_second") is not None:
        return f"{r['records_per_second']:,.0f} rec/s"
    return "-"


def _ratios(r: dict[str, Any]) -> str:
    names = {"full_sync_vs_floor": "vs floor", "records_cpu_vs_floor": "CPU vs floor",
             "ours_vs_rets_time": "time vs rets", "ours_vs_rets_cpu": "CPU vs rets",
             "ours_vs_rets_peak_rss": "RSS vs rets", "photos_per_second_vs_pillow_floor": "vs Pillow",
             "ours_vs_rets_rss_growth": "RSS growth vs rets", "two_vs_one_worker": "2 vs 1 worker"}
    return ", ".join(f"{names.get(k, k)} {v:.2f}x" for k, v in r.get("ratios", {}).items() if v is not None) or "-"


def table(results: list[dict[str, Any]]) -> str:
    head = ("#", "run", "wall s", "rate", "MLS req", "MB", "rows wr", "peak RSS MB", "ratios")
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.get("skipped"):
            rows.append((r["scenario"], r["label"], r["skipped"], "", "", "", "", "", ""))
            continue
        if r.get("error"):
            rows.append((r["scenario"], r["label"], f"ERROR {r['error'][:90]}", "", "", "", "", "", ""))
            continue
        mb = r["bytes_transferred"] / 1e6 if r.get("bytes_transferred") is not None else None
        rss = f"{_fmt(r.get('peak_rss_mb'))} ({r.get('peak_rss_process') or '-'})"
        rows.append((r["scenario"], r["label"], _fmt(r.get("wall_seconds"), 2), _rate(r), _fmt(r.get("mls_requests")),
                     _fmt(mb), _fmt(r.get("rows_written")), rss, _ratios(r)))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines.append("Targets:")
    for r in results:
        for t in r.get("targets", []):
            lines.append(f"  [{t['status']:4}] {r['scenario']} {r['label']}: {t['name']} = {_fmt(t['value'], 2)} "
                         f"(goal {t['goal']})")
    cpu = [(r["scenario"], r["label"], r["cpu_seconds_by_process"]) for r in results
           if r.get("cpu_seconds_by_process") and not r.get("error")]
    if cpu:
        lines.append("")
        lines.append("CPU seconds by process during each row's run (its median pair where repeated; 2 cores = 2 s "
                     "per wall second):")
        lines += [f"  {s} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in by.items() if v >= 0.01)
                  for s, label, by in cpu]
    for r in results:  # a scenario's own table (10's parse curve)
        if r.get("text") and not r.get("error"):
            lines += ["", r["text"]]
    notes = [(r["scenario"], r["label"], n) for r in results for n in r.get("notes", [])]
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines += [f"  {s} {label}: {n}" for s, label, n in notes]
    return "\n".join(lines)


def write(results_dir: Path, stamp: str, doc: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    clean = {**doc, "scenarios": [{k: v for k, v in r.items() if not k.startswith("_")} for r in doc["scenarios"]]}
    text = json.dumps(clean, indent=2, default=str)
    path = results_dir / f"{stamp}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path
