"""What ``python -m pipeline.toy`` writes under reports/toy/: two CSVs and one figure per stream.

- ``curves.csv``: stream, method, step, dead_fraction, quant_error, perplexity (every
  logged step of every run);
- ``summary.csv``: the final row of each stream x method, with the run's K, steps and seed;
- ``<stream>.png``: dead fraction and quantization error against the step for each method,
  and below, per method, the final evaluation batch with the final codes (live codes filled,
  dead ones hollow red).

Numbers are written with 6 significant digits and figures with fixed metadata, so a rerun
with the same seeds writes byte-identical CSVs.
"""
from __future__ import annotations

import io
from pathlib import Path

from .runner import METRICS, ToyResult

CURVE_COLUMNS = ("stream", "method", "step", *METRICS)
SUMMARY_COLUMNS = ("stream", "method", "codebook_size", "steps", "seed", *METRICS)


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _csv(columns, rows) -> str:
    return "\n".join([",".join(columns)] + [",".join(_fmt(r[c]) for c in columns) for r in rows]) + "\n"


def curves_csv(results: list[ToyResult]) -> str:
    return _csv(CURVE_COLUMNS, [{"stream": r.stream, "method": r.method, **row} for r in results for row in r.rows])


def summary_rows(results: list[ToyResult]) -> list[dict]:
    return [{"stream": r.stream, "method": r.method, "codebook_size": r.config.codebook_size,
             "steps": r.config.steps, "seed": r.config.seed, **{m: r.final[m] for m in METRICS}}
            for r in results]


def summary_csv(results: list[ToyResult]) -> str:
    return _csv(SUMMARY_COLUMNS, summary_rows(results))


def stream_figure(stream: str, results: list[ToyResult]) -> bytes:
    """PNG: curves of every method on ``stream`` above a scatter of each method's final codes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig = plt.figure(figsize=(max(8.0, 3.0 * n), 6.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.2])
    ax_dead, ax_err = top.subplots(1, 2)
    # Shared limits in the scatters: where the dead codes were left is part of the picture.
    scatters = bottom.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
    for r in results:
        steps = [row["step"] for row in r.rows]
        ax_dead.plot(steps, [row["dead_fraction"] for row in r.rows], label=r.method)
        ax_err.plot(steps, [row["quant_error"] for row in r.rows], label=r.method)
    ax_dead.set(xlabel="step", ylabel="dead fraction", ylim=(-0.02, 1.02), title=f"{stream}: dead codes")
    ax_err.set(xlabel="step", ylabel="mean ||z - q||^2", yscale="log", title=f"{stream}: quantization error")
    ax_dead.legend(fontsize=8)
    for ax, r in zip(scatters, results):
        k = r.config.codebook_size
        # A residual VQ's codebook is (L, K, 2): only its first level lives in the data's space.
        data, codes = r.final_batch.numpy(), r.codebook.reshape(-1, 2)[:k].numpy()
        alive = (r.final_counts[:k] > 0).numpy()
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75")
        ax.scatter(codes[alive, 0], codes[alive, 1], s=14, c="tab:blue", label="live")
        ax.scatter(codes[~alive, 0], codes[~alive, 1], s=14, facecolors="none", edgecolors="tab:red", label="dead")
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{r.method}: {alive.sum()}/{len(alive)} live", fontsize=9)
        ax.tick_params(labelsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_reports(results: list[ToyResult], out: Path) -> list[Path]:
    """Write the CSVs and one figure per stream under ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "curves.csv", out / "summary.csv"]
    written[0].write_text(curves_csv(results))
    written[1].write_text(summary_csv(results))
    for stream in dict.fromkeys(r.stream for r in results):
        path = out / f"{stream}.png"
        path.write_bytes(stream_figure(stream, [r for r in results if r.stream == stream]))
        written.append(path)
    return written
