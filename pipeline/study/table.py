"""Gather the cells' metrics from ``dvc exp show --json`` into reports/study/methods.{csv,md}.

Per experiment (found by its name under the current baseline) the table takes, from the
experiment's own commit:

    reports/metrics.json    train_codebook_usage -> train_usage (the training set, as the papers
                            count it), val_codebook_usage -> val_usage, train_perplexity ->
                            perplexity, train_dead_codes -> dead_codes, rfid, lpips, ssim,
                            psnr, distortion_per_bit -> dist_per_bit (validation split)
    params.yaml             the budget keys and the cell's own params, checked against the request

and from MLflow (``train_seconds``: a wall time, so it is not in DVC's tracked reports) the
train_vq run of the experiment.

A cell that failed, whose experiment is missing, or whose experiment ran another method,
K or budget than asked is kept as a row with status "failed" and the reason in ``error``:
nothing is dropped silently. A claim's cells add their labels (arm, seed, ...) as columns;
:func:`summarize` averages the seeds of each setting and gives their spread.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from .budget import get_dotted

METRIC_KEYS = {"train_usage": "train_codebook_usage", "val_usage": "val_codebook_usage",
               "perplexity": "train_perplexity", "dead_codes": "train_dead_codes", "rfid": "rfid", "lpips": "lpips",
               "ssim": "ssim", "psnr": "psnr", "dist_per_bit": "distortion_per_bit"}
COLUMNS = ["method", "K", *METRIC_KEYS, "train_seconds", "wall_seconds", "status", "error"]


def exp_show(repo: Path, env: dict[str, str] | None = None) -> list:
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dvc exp show failed in {repo}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def iter_experiments(show: Any) -> Iterator[tuple[str, dict]]:
    """(name, data) of every named experiment in ``dvc exp show --json`` output (DVC 3: a list
    of baselines, each with ``experiments`` -> ``revs``); baselines themselves are skipped."""
    def revs(node: Any, inside: bool) -> Iterator[tuple[str, dict]]:
        if isinstance(node, list):
            for item in node:
                yield from revs(item, inside)
        elif isinstance(node, dict):
            if inside and node.get("name") and isinstance(node.get("data"), dict) and "rev" in node:
                yield node["name"], node["data"]
            for key in ("experiments", "revs"):
                if node.get(key):
                    yield from revs(node[key], True)
    return revs(show, False)


def _file_data(data: dict, kind: str, path: str) -> dict:
    entry = (data.get(kind) or {}).get(path) or {}
    return entry.get("data") or {}


def row_for(cell: dict, data: dict | None, overrides: dict[str, str], train_seconds: float | None = None) -> dict:
    """One table row from a cell run (CellRun.as_dict()), its experiment's exp-show data and
    its train_vq wall time (from MLflow)."""
    row = {c: None for c in COLUMNS}
    row.update(method=cell["method"], K=cell["K"], wall_seconds=round(cell["wall_seconds"], 1),
               status=cell["status"], error=cell["error"], **cell.get("labels", {}))
    if cell["status"] != "ok":
        return row
    if data is None:
        return {**row, "status": "failed", "error": f"experiment {cell['name']} not found in dvc exp show"}
    metrics = _file_data(data, "metrics", "reports/metrics.json")
    params = _file_data(data, "params", "params.yaml")
    for col, key in METRIC_KEYS.items():
        row[col] = metrics.get(key)
    row["train_seconds"] = train_seconds
    problems = []
    if metrics.get("method") != cell["method"] or metrics.get("codebook_size") != cell["K"]:
        problems.append(f"metrics are of {metrics.get('method')} K={metrics.get('codebook_size')}")
    for key, value in sorted({**overrides, **cell.get("sets", {})}.items()):
        if get_dotted(params, key) != yaml.safe_load(str(value)):
            problems.append(f"{key}={get_dotted(params, key)!r}, not {value}")
    # train_seconds is not checked: a cell whose train_vq was restored from the run-cache (another
    # cell trained the same tokenizer, e.g. one that differs only in refine_gan) has no wall time.
    missing = [c for c in METRIC_KEYS if row[c] is None]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if problems:
        row.update(status="failed", error="; ".join(problems))
    return row


def build_table(cells: list[dict], show: Any, overrides: dict[str, str], train_seconds: dict[str, float]):
    """DataFrame with one row per cell, sorted by K, then rFID (best first), failures last.
    ``train_seconds``: {experiment name: train_vq wall time}."""
    import pandas as pd

    found = dict(iter_experiments(show))
    rows = [row_for(c, found.get(c["name"]), overrides, train_seconds.get(c["name"])) for c in cells]
    labels = list(dict.fromkeys(k for c in cells for k in c.get("labels", {})))
    df = pd.DataFrame(rows, columns=["method", "K", *labels, *COLUMNS[2:]])
    df["_failed"] = df["status"] != "ok"
    df = df.sort_values(["K", *labels, "_failed", "rfid", "method"], na_position="last", kind="mergesort")
    return df.drop(columns="_failed").reset_index(drop=True)


def summarize(df, seed: str = "seed"):
    """One row per setting (every column but the metrics, times and ``seed``): the mean and the
    sample standard deviation (``<metric>_sd``, NaN for one seed) over its successful seeds, and
    ``seeds``, their number. Failed cells count in ``failed``."""
    import pandas as pd

    metrics = [*METRIC_KEYS, "train_seconds"]
    keys = [c for c in df.columns if c not in (*metrics, "wall_seconds", "status", "error", seed)]
    out = []
    for setting, g in df.groupby(keys, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(keys, setting if isinstance(setting, tuple) else (setting,)))
        for m in metrics:
            vals = pd.to_numeric(ok[m], errors="coerce")
            row[m] = vals.mean() if len(vals) else math.nan
            row[f"{m}_sd"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
        row.update(seeds=len(ok), failed=len(g) - len(ok))
        out.append(row)
    return pd.DataFrame(out)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v, fmt: str) -> str:
    return "–" if _missing(v) else format(v, fmt)


def _pct(v) -> str:
    return "–" if _missing(v) else f"{100 * v:.1f}%"


def markdown(df, command: str, budget: dict[str, str], baseline: str) -> str:
    """The README table: header with the budget and the command, one line per cell."""
    failed = (df["status"] != "ok").any()
    head = ["method", "K", "train usage", "val. usage", "perplexity", "rFID", "LPIPS", "SSIM", "PSNR (dB)",
            "MSE / bpp", "train time (s)"]
    if failed:
        head.append("status")
    lines = [f"Methods study on the demo data: {len(df)} cells, baseline commit `{baseline}`, budget "
             + ", ".join(f"`{k}={v}`" for k, v in sorted(budget.items())) + ".", "",
             f"Reproduce: `{command}`", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    for r in df.to_dict("records"):
        cells = [r["method"], str(r["K"]), _pct(r["train_usage"]), _pct(r["val_usage"]),
                 _num(r["perplexity"], ".1f"), _num(r["rfid"], ".2f"), _num(r["lpips"], ".4f"),
                 _num(r["ssim"], ".4f"), _num(r["psnr"], ".2f"), _num(r["dist_per_bit"], ".5f"),
                 _num(r["train_seconds"], ".1f")]
        if failed:
            cells.append("ok" if r["status"] == "ok" else f"failed: {str(r['error']).replace('|', '/')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(df, out_dir: Path, command: str, budget: dict[str, str], baseline: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "methods.csv", out_dir / "methods.md"
    df.to_csv(csv, index=False)
    md.write_text(markdown(df, command, budget, baseline))
    return [csv, md]
