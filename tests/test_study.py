"""The methods study (pipeline/study): budget, commands, the table from ``dvc exp show
--json`` (unit, on fabricated output), and one real run of the flow: 2 methods x 1 K as
DVC experiments in a temporary copy of the repository, whose workspace it must not touch.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.study import cells as cells_mod
from pipeline.study.budget import study_budget
from pipeline.study.cells import CellRun, error_summary, exp_run_command
from pipeline.study.table import COLUMNS, build_table, iter_experiments, markdown, write_table
from tests.conftest import REPO

BUDGET = {"train_vq.track_steps": "300", "train_vq.freeze_steps": "100"}


def _exp(name: str, method: str, k: int, rfid: float, track: int = 300) -> dict:
    data = {"rev": name + "-sha",
            "metrics": {"reports/metrics.json": {"data": {"train_codebook_usage": 0.75, "val_codebook_usage": 0.5,
                                                          "train_perplexity": 80.5, "train_dead_codes": 32,
                                                          "rfid": rfid, "lpips": 0.21, "ssim": 0.7, "psnr": 24.5,
                                                          "distortion_per_bit": 0.00123, "method": method,
                                                          "codebook_size": k}}},
            "params": {"params.yaml": {"data": {"quantizer": {"method": method, "codebook_size": k},
                                                "train_vq": {"track_steps": track, "freeze_steps": 100}}}}}
    return {"rev": name + "-sha", "name": name, "data": data, "error": None, "experiments": None}


def _show(*exps: dict) -> list:
    """The shape of DVC 3's ``dvc exp show --json``: workspace, then the baseline with its experiments."""
    return [{"rev": "workspace", "name": None, "data": {"rev": "workspace", "metrics": {}}, "experiments": None},
            {"rev": "base", "name": "main", "data": {"rev": "base", "metrics": {}},
             "experiments": [{"revs": [e], "executor": None, "name": e["name"]} for e in exps]}]


def _cell(method: str, k: int, status: str = "ok", error: str = "") -> dict:
    return CellRun(method, k, f"study-{method}-k{k}", status, error, 50.0).as_dict()


def test_table_from_exp_show_keeps_failures_and_checks_the_budget(tmp_path):
    show = _show(_exp("study-vq-k128", "vq", 128, 90.0), _exp("study-nsvq-k128", "nsvq", 128, 60.0),
                 _exp("study-ema-k128", "ema", 128, 70.0, track=800), _exp("study-vq-k512", "vq", 512, 50.0))
    assert [n for n, _ in iter_experiments(show)] == ["study-vq-k128", "study-nsvq-k128", "study-ema-k128",
                                                      "study-vq-k512"]
    cells = [_cell("vq", 128), _cell("nsvq", 128), _cell("ema", 128), _cell("fc", 128),
             _cell("gumbel", 128, "failed", "error: train_vq: loss is nan"), _cell("vq", 512)]
    times = {c["name"]: 123.4 for c in cells}      # train_vq wall times, from MLflow
    df = build_table(cells, show, BUDGET, times)
    assert list(df.columns) == COLUMNS
    # K-major; within K the best rFID first, failed cells last
    assert list(zip(df["method"], df["K"])) == [("nsvq", 128), ("vq", 128), ("ema", 128), ("fc", 128),
                                                ("gumbel", 128), ("vq", 512)]
    ok = df[df["method"] == "nsvq"].iloc[0]
    assert ok["status"] == "ok" and ok["train_usage"] == 0.75 and ok["rfid"] == 60.0 and ok["train_seconds"] == 123.4
    status = dict(zip(df["method"] + df["K"].astype(str), zip(df["status"], df["error"])))
    assert status["ema128"] == ("failed", "train_vq.track_steps=800, not 300")          # another budget
    assert status["fc128"][0] == "failed" and "not found" in status["fc128"][1]          # no experiment
    assert status["gumbel128"] == ("failed", "error: train_vq: loss is nan")             # the run failed
    assert math.isnan(df[df["method"] == "gumbel"].iloc[0]["rfid"])

    # A cell whose train_vq was restored from the run-cache has no wall time in MLflow: still ok.
    restored = build_table([_cell("vq", 512)], show, BUDGET, {}).iloc[0]
    assert restored["status"] == "ok" and restored["rfid"] == 50.0 and pd.isna(restored["train_seconds"])

    written = write_table(df, tmp_path, "python -m pipeline.study --methods vq", BUDGET, "abc1234")
    assert [p.name for p in written] == ["methods.csv", "methods.md"]
    assert (tmp_path / "methods.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    md = (tmp_path / "methods.md").read_text()
    assert "Reproduce: `python -m pipeline.study --methods vq`" in md and "`train_vq.track_steps=300`" in md
    assert "| nsvq | 128 | 75.0% | 50.0% | 80.5 | 60.00 | 0.2100 | 0.7000 | 24.50 | 0.00123 | 123.4 | ok |" in md
    assert "| gumbel | 128 | – | – | – | – | – | – | – | – | – | failed: error: train_vq: loss is nan |" in md
    # no status column when every cell ran
    assert "status" not in markdown(df[df["status"] == "ok"], "cmd", BUDGET, "abc").splitlines()[4]


def test_budget_defaults_skip_later_stages_only_when_defined(tmp_path):
    params = {"quantizer": {"method": "nsvq"}, "train_vq": {"track_steps": 800, "freeze_steps": 400, "lr": 1e-3}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert study_budget(path) == BUDGET
    path.write_text(yaml.safe_dump({**params, "refine_gan": {"steps": 300}, "train_prior": {"steps": 9}}))
    assert study_budget(path, {"train_vq.lr": 0.002}) == {**BUDGET, "refine_gan.steps": "0", "train_prior.steps": "0",
                                                          "train_vq.lr": "0.002"}
    with pytest.raises(ValueError, match="no such key"):
        study_budget(path, {"train_vq.lrr": "1"})
    with pytest.raises(ValueError, match="per cell"):
        study_budget(path, {"quantizer.method": "vq"})


def test_cell_command_and_failure(monkeypatch, tmp_path):
    cmd = exp_run_command("sf_diveq", 512, BUDGET)
    assert cmd[:3] == [sys.executable, "-m", "dvc"]
    assert cmd[3:] == ["exp", "run", "--temp", "-n", "study-sf_diveq-k512", "-S", "quantizer.codebook_size=512",
                       "-S", "quantizer.method=sf_diveq", "-S", "train_vq.freeze_steps=100",
                       "-S", "train_vq.track_steps=300"]
    out = "Running stage 'train_vq':\nTraceback ...\nerror: quantizer.codebook_size: 1 is out of range\n" \
          "ERROR: failed to reproduce 'train_vq': failed to run: python -m stages.train_vq, exited with 2\n"
    assert error_summary(out) == "error: quantizer.codebook_size: 1 is out of range"
    assert error_summary("x\nRuntimeError: boom\nERROR: failed") == "RuntimeError: boom"

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd[3:5])
        return subprocess.CompletedProcess(cmd, 1 if cmd[4] == "run" else 0, "", out)
    monkeypatch.setattr(cells_mod.subprocess, "run", fake_run)
    result = cells_mod.run_cell(tmp_path, "vq", 16, BUDGET, {}, log=lambda s: None)
    assert calls == [["exp", "remove"], ["exp", "run"]]        # a same-name experiment is removed first
    assert (result.status, result.error) == ("failed", "error: quantizer.codebook_size: 1 is out of range")


def test_a_claims_cell_carries_its_params_and_labels_into_the_table():
    from pipeline.study.cells import Cell
    from pipeline.study.table import summarize

    cells = [Cell("vq", 128, (("train_vq.seed", str(s)), ("pretrain.steps", "50")), (("arm", "drift"), ("seed", s)),
                  f"drift-s{s}") for s in (0, 1)]
    assert cells[0].name == "study-vq-k128-drift-s0"
    assert cells[0].overrides(BUDGET) == {**BUDGET, "train_vq.seed": "0", "pretrain.steps": "50"}
    assert cells[0].upstream == cells[1].upstream == (128, (("pretrain.steps", "50"),))
    cmd = exp_run_command("vq", 128, cells[0].overrides(BUDGET), cells[0].name)
    assert cmd[6:8] == ["-n", "study-vq-k128-drift-s0"] and "train_vq.seed=0" in cmd

    exps = []
    for c, rfid in zip(cells, (50.0, 70.0)):
        e = _exp(c.name, "vq", 128, rfid)
        e["data"]["params"]["params.yaml"]["data"].update(train_vq={"track_steps": 300, "freeze_steps": 100,
                                                                    "seed": c.labels[1][1]}, pretrain={"steps": 50})
        exps.append(e)
    runs = [CellRun("vq", 128, c.name, "ok", "", 9.0, dict(c.sets), dict(c.labels)).as_dict() for c in cells]
    df = build_table(runs, _show(*exps), BUDGET, {c.name: 10.0 for c in cells})
    assert list(df.columns[:4]) == ["method", "K", "arm", "seed"] and (df["status"] == "ok").all()
    s = summarize(df).iloc[0]
    assert (s["arm"], s["seeds"], s["failed"]) == ("drift", 2, 0)
    assert s["rfid"] == 60.0 and s["rfid_sd"] == pytest.approx(math.sqrt(200.0))    # sample sd of 50, 70
    wrong = dict(runs[1], sets={**runs[1]["sets"], "train_vq.seed": "5"})            # the cell's own params are checked
    bad = build_table([runs[0], wrong], _show(*exps), BUDGET, {c.name: 10.0 for c in cells})
    assert "train_vq.seed=1, not 5" in bad["error"].tolist()


# -- the real thing -------------------------------------------------------------------------

@pytest.mark.slow
def test_methods_study_runs_dvc_experiments(tmp_path, prefect_api_url, monkeypatch):
    from tests.test_pipeline_e2e import TINY, _set_params, _source_only

    from pipeline.study.flow import methods_study

    root = tmp_path / "repo"
    shutil.copytree(REPO, root, ignore=_source_only(REPO))
    (root / "reports").mkdir(exist_ok=True)
    _set_params(root, TINY)
    monkeypatch.setenv("NSVQ_DEVICE", "cpu")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True)
    params_before = (root / "params.yaml").read_bytes()

    rows = methods_study(["vq", "ema"], [16], {"train_vq.track_steps": "10", "train_vq.freeze_steps": "5"},
                         repo=str(root))

    assert [(r["method"], r["K"], r["status"]) for r in rows] in (
        [("vq", 16, "ok"), ("ema", 16, "ok")], [("ema", 16, "ok"), ("vq", 16, "ok")]), rows
    for r in rows:
        assert 0 < r["train_usage"] <= 1 and 0 < r["val_usage"] <= 1 and 1 <= r["perplexity"] <= 16
        assert r["rfid"] > 0 and r["train_seconds"] > 0
    lines = (root / "reports" / "study" / "methods.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3
    md = (root / "reports" / "study" / "methods.md").read_text()
    assert "train_vq.track_steps=10" in md and "| vq | 16 |" in md and "| ema | 16 |" in md

    # --temp: the workspace is untouched (params.yaml included); only the study's outputs are new
    assert (root / "params.yaml").read_bytes() == params_before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert status.split() == ["??", "reports/"], status

    # The stages logged into the repository's own MLflow store, one parent per experiment;
    # the second cell restored prepare/pretrain/kmeans_init from the run-cache.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nsvq-pipeline")
    assert exp.artifact_location == (root / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    vq_runs = {r.data.tags.get("dvc.exp_name"): r.data.params["quantizer.method"]
               for r in runs if r.data.tags.get("nsvq.stage") == "train_vq"}
    assert vq_runs == {"study-vq-k16": "vq", "study-ema-k16": "ema"}
    assert [r.data.tags.get("nsvq.stage") for r in runs].count("pretrain") == 1


def test_cells_run_in_waves_that_share_the_run_cache():
    from pipeline.study.flow import cell_waves

    cells = [("vq", 64), ("ema", 64), ("nsvq", 64), ("vq", 128), ("ema", 128)]
    # the first cell computes prepare and pretrain; each other K's first cell its k-means
    assert cell_waves(cells) == [[("vq", 64)], [("vq", 128)], [("ema", 64), ("nsvq", 64), ("ema", 128)]]
    assert cell_waves([("vq", 64)]) == [[("vq", 64)]]


def test_concurrent_cells_get_their_own_gpus_or_share_the_cores():
    from pipeline.study.flow import cell_slots

    assert cell_slots(1) == [{}]
    assert cell_slots(2, gpus=8) == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}]
    assert cell_slots(2, gpus=0, cores=16) == [{"OMP_NUM_THREADS": "8"}] * 2
    with pytest.raises(ValueError, match="--jobs 4 needs at least 4 GPUs"):
        cell_slots(4, gpus=2)
