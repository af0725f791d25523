"""Figures the evaluate stage writes under reports/plots/ (matplotlib, headless)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # Fixed metadata so identical figures give identical bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _figure().close(fig)
    return buf.getvalue()


def image_grid(rows: list[np.ndarray], labels: list[str] | None = None) -> bytes:
    """PNG of rows of uint8 NHWC images (e.g. originals above reconstructions)."""
    plt = _figure()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.0, len(rows) * 1.1), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
        if labels:
            axes[i][0].set_title(labels[i], fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    return _png(fig)


def usage_histogram(counts: np.ndarray) -> bytes:
    """PNG of per-code usage counts, sorted from most to least used (log scale)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1] + 1e-9, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("assignments (validation)")
    used = int((counts > 0).sum())
    ax.set_title(f"codebook usage: {used}/{len(counts)} codes used")
    fig.tight_layout()
    return _png(fig)


def loss_curves(histories: dict[str, list[dict[str, float]]], keys=("loss", "rec_loss")) -> bytes:
    """PNG with one panel per stage: the logged losses against the step (log scale; only
    positive values are drawn). ``keys``: the keys for every stage, or a dict of them per
    stage (stages not in it get ("loss", "rec_loss"))."""
    plt = _figure()
    fig, axes = plt.subplots(1, max(1, len(histories)), figsize=(5 * max(1, len(histories)), 3), squeeze=False)
    for ax, (stage, hist) in zip(axes[0], histories.items()):
        stage_keys = keys.get(stage, ("loss", "rec_loss")) if isinstance(keys, dict) else keys
        for key in stage_keys:
            pts = [(h["step"], h[key]) for h in hist if h.get(key) is not None and h[key] > 0]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def message(text: str) -> bytes:
    """PNG holding one line of text (a stand-in figure, e.g. when no prior was trained)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    return _png(fig)


def read_history_csv(path: Path) -> list[dict[str, float]]:
    lines = Path(path).read_text().splitlines()
    keys = lines[0].split(",")
    return [{k: float(v) for k, v in zip(keys, line.split(",")) if v != ""} for line in lines[1:]]
