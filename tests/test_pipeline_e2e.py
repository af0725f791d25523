"""End to end: the real `dvc repro` on tiny params in a temporary copy of the repository.

Checks metrics.json and the MLflow runs of a full run (all seven stages), that changing a
param reruns only the stages that read it and those downstream (another method's options
leave the pipeline up to date), the skip paths (refine_gan.steps 0, train_prior.steps 0), that
prepare is byte-deterministic (a forced rerun leaves the pipeline up to date), that every
stage's dvc.yaml deps cover the code it runs, and that a bad param stops a stage before it
writes anything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STAGES = ["prepare", "pretrain", "kmeans_init", "train_vq", "refine_gan", "train_prior", "evaluate"]

TINY = {
    "data": {"image_size": 32, "demo_train_crops": 96, "demo_val_crops": 12},
    "model": {"hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "downsample": 4, "code_dim": 8},
    "quantizer": {"codebook_size": 16, "replacement": {"period": 10}},
    "pretrain": {"steps": 30, "batch_size": 8, "log_every": 5, "checkpoint_every": 10},
    "kmeans_init": {"iters": 5},
    "train_vq": {"track_steps": 20, "freeze_steps": 10, "batch_size": 8, "log_every": 5, "checkpoint_every": 10},
    "refine_gan": {"steps": 6, "disc_start": 2, "batch_size": 8, "disc_channels": 16, "log_every": 2,
                   "checkpoint_every": 10, "grid_images": 4},
    "train_prior": {"steps": 30, "layers": 1, "heads": 2, "width": 32, "warmup_steps": 5, "batch_size": 16,
                    "num_samples": 8, "log_every": 5, "checkpoint_every": 100},
    "evaluate": {"batch_size": 16},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _source_only(top: Path):
    """copytree filter: the repository's sources, without run outputs or local environments."""
    top_level = {".git", ".venv", ".cache", ".dvc_tmp", "data", "models", "checkpoints", "mlflow.db",
                 "mlartifacts", "mlruns", "dvc.lock", "reports", ".imports"}
    anywhere = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info")

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = set(anywhere(folder, names))
        if Path(folder).resolve() == top.resolve():
            skip |= top_level & set(names)
        return skip
    return ignore


def _set_params(root: Path, over: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, over), sort_keys=False))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, prefect_api_url):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO, root, dirs_exist_ok=True, ignore=_source_only(REPO))
    (root / "reports").mkdir()
    _set_params(root, TINY)
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "NSVQ_RECORD_IMPORTS": str(root / ".imports"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "NSVQ_DEVICE": "cpu"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    return root, env


def _repro(root: Path, env: dict, *args: str) -> list[str]:
    """Run `dvc repro` and return the stages it ran, in order."""
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return re.findall(r"Running stage '([^']+)'", out.stdout)


def _mlflow_children(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nsvq-pipeline")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    return client, runs


def _metric_steps(client, run, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_full_pipeline_then_selective_reruns(workdir):
    root, env = workdir
    assert _repro(root, env) == STAGES

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    for key in ("rfid", "lpips", "ssim", "psnr", "codebook_usage", "perplexity", "distortion_per_bit", "gfid",
                "bits_per_token", "token_entropy_bits"):
        assert isinstance(metrics[key], float), key
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["perplexity"] <= 16
    assert metrics["rfid"] > 0 and 0 < metrics["lpips"] < 1 and metrics["psnr"] > 5
    assert metrics["gfid"] > 0 and metrics["gfid_num_samples"] == 8
    assert 0 < metrics["bits_per_token"] < 8 and 0 < metrics["token_entropy_bits"] <= 4   # K = 16: log2 K = 4
    for plot in ("reconstructions.png", "codebook_usage.png", "loss_curves.png", "samples.png", "refine_gan_grid.png"):
        assert (root / "reports" / "plots" / plot).stat().st_size > 1000

    # refine_gan (decoder only) keeps the tokens; train_prior caches tokens and samples.
    import numpy as np

    refine = json.loads((root / "reports" / "refine_gan.json").read_text())
    assert refine["steps"] == 6 and refine["val_tokens_changed"] == 0
    assert (root / "models" / "tokenizer.pt").read_bytes() != (root / "models" / "vq.pt").read_bytes()
    assert np.load(root / "data" / "tokens" / "train.npy").shape == (96, 8, 8)
    assert np.load(root / "data" / "samples" / "samples.npy").shape == (8, 32, 32, 3)
    prior = json.loads((root / "reports" / "train_prior.json").read_text())
    assert prior["val_bits_per_token"] == pytest.approx(metrics["bits_per_token"], rel=1e-5)

    client, runs = _mlflow_children(root)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert [c.data.tags["nsvq.stage"] for c in children] == STAGES
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert all(r.data.tags["git_commit"] == head for r in runs)
    by_stage = {c.data.tags["nsvq.stage"]: c for c in children}
    vq_run = by_stage["train_vq"]
    assert len(client.get_metric_history(vq_run.info.run_id, "loss")) == 6          # step-wise, every 5 steps
    assert vq_run.data.params["quantizer.method"] == "nsvq"
    assert "checkpoint_reference.json" in {a.path for a in client.list_artifacts(vq_run.info.run_id)}
    gan_run = by_stage["refine_gan"]
    for key in ("d_loss", "nll_loss", "logits_real", "logits_fake"):
        assert _metric_steps(client, gan_run, key) == [2, 4, 6], key
    for key in ("g_loss", "adaptive_weight"):                                         # after the warm-up
        assert _metric_steps(client, gan_run, key) == [4, 6], key
    assert {"refine_gan_grid.png", "loss_refine_gan.csv", "checkpoint_reference.json"} <= \
        {a.path for a in client.list_artifacts(gan_run.info.run_id)}
    prior_run = by_stage["train_prior"]
    assert _metric_steps(client, prior_run, "loss") == [5, 10, 15, 20, 25, 30]
    assert prior_run.data.metrics["val_bits_per_token"] == pytest.approx(metrics["bits_per_token"], rel=1e-5)
    assert "grid.png" in {a.path for a in client.list_artifacts(prior_run.info.run_id)}
    for key in ("rfid", "gfid", "bits_per_token"):
        assert parents[0].data.metrics[key] == pytest.approx(metrics[key], rel=1e-4), key
        assert by_stage["evaluate"].data.metrics[key] == pytest.approx(metrics[key], rel=1e-4), key
    assert parents[0].data.metrics["refine_gan/val_tokens_changed"] == 0
    assert parents[0].data.params["train_vq.track_steps"] == "20"
    assert parents[0].data.params["train_prior.layers"] == "1"

    # Every stage's deps cover the code it ran (a package folder covers its files: the GPU's
    # kernels, which a CPU run never imports, sit in pipeline/kernels beside the search).
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    for stage in STAGES:
        ran = set((root / ".imports" / f"{stage}.txt").read_text().split())
        listed = set()
        for dep in dvc["stages"][stage]["deps"]:
            path = root / dep
            if path.is_dir():
                listed |= {str(p.relative_to(root)) for p in path.rglob("*.py")}
            elif dep.endswith(".py"):
                listed.add(dep)
        assert ran <= listed, f"{stage} runs code not in its deps: {sorted(ran - listed)}"
        assert all((root / dep).exists() or dep.startswith("${") for dep in dvc["stages"][stage]["deps"]), stage

    # A forced prepare writes byte-identical data, so nothing downstream is stale; the same for
    # a model file (k-means codes: torch.save's bytes must not depend on the temp file's name).
    assert _repro(root, env, "--force", "--single-item", "prepare") == ["prepare"]
    assert _repro(root, env) == []
    assert _repro(root, env, "--force", "--single-item", "kmeans_init") == ["kmeans_init"]
    assert _repro(root, env) == []

    # Another method's options change nothing here; the method's own options rerun train_vq and
    # what follows. A train_vq param reruns everything downstream of train_vq; an evaluate param,
    # evaluate only.
    _set_params(root, {"quantizer": {"gumbel": {"tau0": 2.0}, "ema": {"decay": 0.9}}})
    assert _repro(root, env) == []
    _set_params(root, {"quantizer": {"nsvq": {"lam": 0.02}}})
    assert _repro(root, env) == ["train_vq", "refine_gan", "train_prior", "evaluate"]
    _set_params(root, {"train_vq": {"lr": 0.001}})
    assert _repro(root, env) == ["train_vq", "refine_gan", "train_prior", "evaluate"]
    _set_params(root, {"evaluate": {"grid_images": 4}})
    assert _repro(root, env) == ["evaluate"]
    # A train_prior param makes train_prior (alone) stale; evaluate follows from its outputs.
    _set_params(root, {"train_prior": {"temperature": 0.9}})
    status = json.loads(subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert set(status) == {"train_prior"}, status
    _set_params(root, {"train_prior": {"temperature": 1.0}})

    # The skip paths: refine_gan.steps 0 passes vq.pt through, train_prior.steps 0 trains no prior.
    _set_params(root, {"refine_gan": {"steps": 0}, "train_prior": {"steps": 0}})
    assert _repro(root, env) == ["refine_gan", "train_prior", "evaluate"]
    assert (root / "models" / "tokenizer.pt").read_bytes() == (root / "models" / "vq.pt").read_bytes()
    refine = json.loads((root / "reports" / "refine_gan.json").read_text())
    assert refine["steps"] == 0 and refine["val_tokens_changed"] == 0
    skipped = json.loads((root / "reports" / "metrics.json").read_text())
    assert skipped["gfid"] is None and skipped["bits_per_token"] is None and "steps is 0" in skipped["prior_note"]
    assert isinstance(skipped["rfid"], float) and isinstance(skipped["token_entropy_bits"], float)
    assert np.load(root / "data" / "samples" / "samples.npy").shape == (0, 32, 32, 3)

    _, runs = _mlflow_children(root)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 6   # full run, forced prepare, nsvq change, train_vq change, evaluate change, skip paths
    last = [r.data.tags["nsvq.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    assert last == ["refine_gan", "train_prior", "evaluate"]
    assert "gfid" not in parents[-1].data.metrics and "rfid" in parents[-1].data.metrics


def test_bad_param_stops_stage_before_writing(workdir, tmp_path):
    root, env = workdir
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=_source_only(root))
    _set_params(bad, {"train_vq": {"lr": -1.0}})
    out = subprocess.run([sys.executable, "-m", "stages.train_vq"], cwd=bad, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "train_vq.lr: -1.0 is out of range" in out.stderr
    assert not (bad / "models").exists() and not (bad / "mlflow.db").exists()
