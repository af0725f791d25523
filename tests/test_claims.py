"""The claims' grids (pipeline/claims/specs.py) and their reports (report.py): every claim's
cells are valid params, seeds and arms label the rows, and a rerun rewrites only the table
of reports/claims/<claim>.md, never its hand-written verdict."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.claims.__main__ import main
from pipeline.claims.flow import check_cell_keys, claim_budget, claim_command
from pipeline.claims.report import TABLE_BEGIN, TABLE_END, write_claim
from pipeline.claims.specs import CLAIMS
from pipeline.study.table import COLUMNS, summarize
from tests.conftest import REPO


@pytest.mark.parametrize("name", list(CLAIMS))
def test_every_claims_cells_are_params_of_this_repository(name):
    claim = CLAIMS[name]
    budget = claim_budget(REPO, claim)
    assert budget["data.demo_val_crops"] == "1024" and budget["train_prior.steps"] == "0"
    cells = claim.cells([0, 1])
    check_cell_keys(REPO, cells)
    assert len({c.name for c in cells}) == len(cells)                      # one experiment name each
    seeds = [dict(c.labels)["seed"] for c in cells]
    assert seeds.count(0) == seeds.count(1) == len(cells) // 2            # every setting at both seeds
    for c in cells:
        assert dict(c.sets)["train_vq.seed"] == str(dict(c.labels)["seed"])


def test_the_grid_selection_and_the_dry_run(capsys):
    claim = CLAIMS["ns_vq_tables"]
    cells = claim.cells([0], methods=["vq"], codebook_sizes=[64], arms=["drift"], dims=[3])
    assert [(c.method, c.K, dict(c.sets)["model.code_dim"], dict(c.sets)["train_vq.init"]) for c in cells] == [
        ("vq", 64, "3", "kmeans")]
    assert claim_command("ns_vq_tables", [0], {"dims": [3], "methods": None}) == \
        "python -m pipeline.claims run ns_vq_tables --seeds 0 --dims 3"
    assert main(["run", "batch_size", "--seeds", "0", "--dry-run", "--repo", str(REPO)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all("-S train_vq.init=scratch" in ln for ln in lines)
    assert main(["run", "nosuch"]) == 2


def _cells_df():
    rows = []
    for seed, rfid in ((0, 100.0), (1, 110.0)):
        rows.append({**{c: None for c in COLUMNS}, "method": "vq", "K": 64, "arm": "drift", "seed": seed,
                     "train_usage": 0.5, "val_usage": 0.25, "dead_codes": 32, "perplexity": 20.0, "rfid": rfid,
                     "lpips": 0.1, "ssim": 0.7, "psnr": 25.0, "dist_per_bit": 0.001, "train_seconds": 10.0,
                     "wall_seconds": 60.0, "status": "ok", "error": ""})
    return pd.DataFrame(rows, columns=["method", "K", "arm", "seed", *COLUMNS[2:]])


def test_a_rerun_rewrites_the_table_and_keeps_the_verdict(tmp_path):
    claim = CLAIMS["batch_size"]
    df = _cells_df()
    args = (df, summarize(df), "python -m pipeline.claims run batch_size", 125.0, {"a.b": "1"}, "abc1234")
    written = write_claim(tmp_path, claim, *args)
    assert [p.name for p in written] == ["cells.csv", "summary.csv", "batch_size.md"]
    md = (tmp_path / "batch_size.md").read_text()
    # sample sd of 100 and 110: 7.07
    assert "| vq | 64 | drift | 2 | 50.0% ± 0.0 | 25.0% ± 0.0 | 32 ± 0 | 20 ± 0 | 105.0 ± 7.1 |" in md
    assert "wall time 2.1 min" in md and claim.paper in md
    (tmp_path / "batch_size.md").write_text(md.replace("Not written yet: read the table.", "Holds here."))
    write_claim(tmp_path, claim, *args[:3], 300.0, *args[4:])
    again = (tmp_path / "batch_size.md").read_text()
    assert "Holds here." in again and "wall time 5.0 min" in again
    assert again.count(TABLE_BEGIN.format(name="batch_size")) == 1 and again.count(TABLE_END) == 1
