"""A claim's tables: the cells (one row per experiment) and the summary (mean and sample
standard deviation over the seeds of each setting) as CSV, and the summary as markdown, which
also goes into ``reports/claims/<claim>.md`` between its table markers (the verdict around it
is written by hand, from these numbers)."""
from __future__ import annotations

import math
from pathlib import Path

from ..readme_tables import replace_between

TABLE_BEGIN = "<!-- claim table: written by `python -m pipeline.claims run {name}`; do not edit by hand -->"
TABLE_END = "<!-- end of claim table -->"
# (column, header, format, as a percentage)
SHOWN = [("train_usage", "train usage", ".1f", True), ("val_usage", "val. usage", ".1f", True),
         ("dead_codes", "dead codes (train)", ".0f", False), ("perplexity", "perplexity (train)", ".0f", False),
         ("rfid", "rFID", ".1f", False), ("lpips", "LPIPS", ".4f", False), ("ssim", "SSIM", ".3f", False),
         ("psnr", "PSNR (dB)", ".2f", False), ("dist_per_bit", "MSE / bpp", ".5f", False),
         ("train_seconds", "train_vq (s)", ".0f", False)]


def _cell(mean, sd, fmt: str, pct: bool) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale = 100.0 if pct else 1.0
    text = format(mean * scale, fmt) + ("%" if pct else "")
    if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
        text += " ± " + format(sd * scale, fmt)
    return text


def summary_markdown(summary, command: str, wall_seconds: float, budget: dict[str, str], baseline: str,
                     arms=()) -> str:
    keys = [c for c in summary.columns if c in ("arm", "D", "K", "method")]
    head = [*keys, "seeds", *(h for _, h, _, _ in SHOWN)]
    shown = set(summary["arm"]) if "arm" in summary else set()
    arm_lines = [f"- `{a.name}`: " + ", ".join(f"`{k}={v}`" for k, v in sorted(a.sets.items()))
                 + (f" (methods: {', '.join(a.methods)})" if a.methods else "") for a in arms if a.name in shown]
    lines = [f"Measured at commit `{baseline}`; wall time {wall_seconds / 60:.1f} min on this machine. "
             f"Budget shared by every cell: " + ", ".join(f"`{k}={v}`" for k, v in sorted(budget.items()))
             + "; each arm's own params (they win over the budget):", "", *arm_lines,
             "", f"Reproduce: `{command}`", "",
             "Mean ± sample standard deviation over the seeds; usage, perplexity and dead codes on the training "
             "set (every token of the training split, final tokenizer), the other metrics on the validation split.",
             "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(keys) + ["---:"] * (len(head) - len(keys))) + "|"]
    for r in summary.to_dict("records"):
        seeds = str(r["seeds"]) + (f" ({r['failed']} failed)" if r["failed"] else "")
        lines.append("| " + " | ".join([*(str(r[k]) for k in keys), seeds,
                                        *(_cell(r[c], r.get(f"{c}_sd"), f, p) for c, _, f, p in SHOWN)]) + " |")
    return "\n".join(lines) + "\n"


def write_claim(out_dir: Path, claim, cells_df, summary, command: str, wall_seconds: float,
                budget: dict[str, str], baseline: str) -> list[Path]:
    """reports/claims/<name>/{cells,summary}.csv and the table in reports/claims/<name>.md."""
    folder = out_dir / claim.name
    folder.mkdir(parents=True, exist_ok=True)
    cells_csv, summary_csv, md = folder / "cells.csv", folder / "summary.csv", out_dir / f"{claim.name}.md"
    if "arm" in summary:           # the claim's own order of arms, not the alphabet's
        order = {a.name: i for i, a in enumerate(claim.arms)}
        summary = summary.sort_values("arm", key=lambda col: col.map(order), kind="mergesort").reset_index(drop=True)
    cells_df.to_csv(cells_csv, index=False)
    summary.to_csv(summary_csv, index=False)
    table = summary_markdown(summary, command, wall_seconds, budget, baseline, claim.arms)
    begin = TABLE_BEGIN.format(name=claim.name)
    text = md.read_text() if md.exists() else (
        f"# {claim.title}\n\n**The paper:** {claim.paper}\n\n## Our measurement\n\n{begin}\n{TABLE_END}\n\n"
        "## Verdict\n\nNot written yet: read the table.\n")
    md.write_text(replace_between(text, begin, TABLE_END, table.rstrip("\n")))
    return [cells_csv, summary_csv, md]
