"""End to end: the real `dvc repro` on tiny params in a temporary copy of the repository.

Checks metrics.json and the MLflow runs of a full run (all seven stages), that changing a
param reruns only the stages that read it and those downstream (another method's options
leave the pipeline up to date), the skip paths (refine_gan.steps 0, train_prior.steps 0), that
prepare is byte-deterministic (a forced rerun leaves the pipeline up to date), that every
stage's dvc.yaml deps cover the code it runs, and that a bad param stops a stage before it
writes anything. Then what a hostile user tried: user failures end in one error line, a typo'd
params section fails the repro before any output is deleted, a changed source folder reruns
prepare, a run's models and summaries are found from MLflow (and partial reruns' parents compare),
and a stage killed with SIGKILL leaves no server behind and its runs marked.
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
    "model": {"code_dim": 8, "ns_vqvae": {"hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "downsample": 4}},
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
    """Run `dvc repro` and return the stages it ran, in order, after `check` (which runs first,
    every time, unless a single other stage is forced)."""
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    ran = re.findall(r"Running stage '([^']+)'", out.stdout)
    if "--single-item" not in args:
        assert ran[:1] == ["check"], ran
    return [s for s in ran if s != "check"]


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
    for key in ("rfid", "lpips", "ssim", "psnr", "val_codebook_usage", "val_perplexity", "train_codebook_usage",
                "train_perplexity", "distortion_per_bit", "gfid", "bits_per_token", "token_entropy_bits"):
        assert isinstance(metrics[key], float), key
    for split in ("val", "train"):
        assert 0 < metrics[f"{split}_codebook_usage"] <= 1 and 1 <= metrics[f"{split}_perplexity"] <= 16
        assert metrics[f"{split}_dead_codes"] == round(16 * (1 - metrics[f"{split}_codebook_usage"]))
    assert metrics["train_usage_tokens"] > metrics["val_usage_tokens"]
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
    assert len(client.get_metric_history(vq_run.info.run_id, "epoch_usage")) >= 1       # training-set usage per epoch
    gan_run = by_stage["refine_gan"]
    for key in ("d_loss", "nll_loss", "logits_real", "logits_fake"):
        assert _metric_steps(client, gan_run, key) == [2, 4, 6], key
    for key in ("g_loss", "adaptive_weight"):                                         # after the warm-up
        assert _metric_steps(client, gan_run, key) == [4, 6], key
    assert {"refine_gan_grid.png", "loss_refine_gan.csv"} <= {a.path for a in client.list_artifacts(gan_run.info.run_id)}
    prior_run = by_stage["train_prior"]
    assert _metric_steps(client, prior_run, "loss") == [5, 10, 15, 20, 25, 30]
    assert prior_run.data.metrics["val_bits_per_token"] == pytest.approx(metrics["bits_per_token"], rel=1e-5)
    assert "grid.png" in {a.path for a in client.list_artifacts(prior_run.info.run_id)}
    for key in ("rfid", "gfid", "bits_per_token"):
        assert parents[0].data.metrics[key] == pytest.approx(metrics[key], rel=1e-4), key
        assert by_stage["evaluate"].data.metrics[key] == pytest.approx(metrics[key], rel=1e-4), key
    assert parents[0].data.metrics["refine_gan/val_tokens_changed"] == 0
    _check_lineage(root, client, parents[0], by_stage)
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
    # A retrained stage (same inputs, another wall time) changes no tracked file: nothing
    # downstream reruns.
    assert _repro(root, env, "--force", "--single-item", "train_vq") == ["train_vq"]
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
    assert set(status) == {"check", "train_prior"}, status      # check: always_changed
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
    # full run, forced prepare (+ kmeans_init, train_vq: no child of theirs yet), nsvq change,
    # train_vq change, evaluate change, skip paths
    assert len(parents) == 6
    last = [r.data.tags["nsvq.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    assert last == ["refine_gan", "train_prior", "evaluate"]
    assert "gfid" not in parents[-1].data.metrics and "rfid" in parents[-1].data.metrics
    # Partial reruns compare with the full run: every stage's summary is on every parent (a
    # stage that did not rerun contributes the run that produced its current outputs).
    full = set(parents[0].data.metrics)
    evaluate_only = parents[4]
    assert [r.data.tags["nsvq.stage"] for r in runs
            if r.data.tags.get("mlflow.parentRunId") == evaluate_only.info.run_id] == ["evaluate"]
    assert set(evaluate_only.data.metrics) == full
    upstream = {k for k in full if k.split("/")[0] in ("prepare", "pretrain", "kmeans_init", "train_vq")}
    assert upstream and upstream <= set(parents[-1].data.metrics)
    first_vq = evaluate_only.data.tags["nsvq.summary_from.train_vq"]
    assert evaluate_only.data.metrics["train_vq/final_loss"] == client.get_run(first_vq).data.metrics["final_loss"]


def _check_lineage(root: Path, client, parent, by_stage) -> None:
    """Models in MLflow, DVC hashes on the runs, the dataset as input, names, experiment kind."""
    import mlflow
    import torch

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage, run in by_stage.items():
        outs = {o["path"]: o["md5"] for o in lock[stage]["outs"]}
        tagged = {k.split(":", 1)[1]: v for k, v in run.data.tags.items() if k.startswith("dvc.md5:")}
        assert tagged and tagged == {k: v for k, v in outs.items() if k in tagged}, stage   # files and .dir hashes
        assert run.info.run_name == f"nsvq K=16 {stage}"
        assert run.data.tags["prefect.flow_run_id"]
    assert parent.info.run_name == "nsvq K=16"
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
    for run in (parent, by_stage["train_vq"]):
        (ds,) = {d.dataset.name: d for d in client.get_run(run.info.run_id).inputs.dataset_inputs}.values()
        assert json.loads(ds.dataset.profile)["shards_sha256"] == manifest["sha256"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    gan = by_stage["refine_gan"]
    tokenizer = mlflow.pytorch.load_model(f"runs:/{gan.info.run_id}/tokenizer")
    from pipeline.models.io import load_autoencoder

    on_disk, _ = load_autoencoder(root / "models" / "tokenizer.pt")
    for (k, a), b in zip(on_disk.state_dict().items(), tokenizer.state_dict().values()):
        assert torch.equal(a, b), k
    prior = mlflow.pytorch.load_model(f"runs:/{by_stage['train_prior'].info.run_id}/prior")
    assert prior(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 16)
    model_tags = [m.tags for m in client.search_logged_models([exp.experiment_id])]
    assert {"dvc.path": "models/tokenizer.pt", "dvc.md5": {o["path"]: o["md5"] for o in
            lock["refine_gan"]["outs"]}["models/tokenizer.pt"]}.items() <= {
        k: v for t in model_tags for k, v in t.items() if t.get("dvc.path") == "models/tokenizer.pt"}.items()


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


def _copy_with_outputs(root: Path, dest: Path) -> Path:
    """A copy of the run repository with its outputs, DVC state and MLflow store."""
    shutil.copytree(root, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".imports"))
    return dest


def _stage(root: Path, env: dict, stage: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_error_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors
    assert "Traceback" not in out.stderr + out.stdout


def test_user_failures_end_in_one_error_line(workdir, tmp_path):
    root, env = workdir
    bad = _copy_with_outputs(root, tmp_path / "bad")
    vq = bad / "models" / "vq.pt"
    vq.unlink()                                      # DVC's cache holds it; a link would corrupt that
    vq.write_bytes((root / "models" / "vq.pt").read_bytes()[:5000])
    _one_error_line(_stage(bad, env, "refine_gan"), "models/vq.pt", "unreadable model file")
    _set_params(bad, {"quantizer": {"codebook_size": 100000}})
    _one_error_line(_stage(bad, env, "kmeans_init"), "quantizer.codebook_size", "100000")
    _set_params(bad, {"quantizer": {"codebook_size": 16}, "data": {"source": str(tmp_path / "nowhere")}})
    _one_error_line(_stage(bad, env, "prepare"), "data.source", "nowhere")


def test_every_param_is_checked_before_any_output_is_deleted(workdir, tmp_path):
    root, env = workdir
    bad = _copy_with_outputs(root, tmp_path / "typo")
    before = {p: p.read_bytes() for p in (bad / "models").iterdir()}
    with open(bad / "params.yaml", "a") as f:
        f.write("trian_vq:\n  lr: 0.1\n")
    _set_params(bad, {"train_vq": {"lr": 0.002}})     # train_vq and after would rerun
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=bad, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "error: params.yaml: unknown key trian_vq" in out.stderr
    assert re.findall(r"Running stage '([^']+)'", out.stdout) == ["check"]
    assert {p: p.read_bytes() for p in (bad / "models").iterdir()} == before


def test_a_changed_source_folder_reruns_prepare(workdir, tmp_path):
    from PIL import Image

    root, env = workdir
    repo = _copy_with_outputs(root, tmp_path / "folder")
    src = tmp_path / "images"
    src.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(src / f"{i}.png")
    Image.new("P", (40, 40), 3).save(src / "palette.gif")
    (src / "notes.txt").write_text("not an image")
    _set_params(repo, {"data": {"source": str(src)}})
    assert _repro(repo, env, "prepare") == ["prepare"]
    manifest = json.loads((repo / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["used_files"] == 7 and manifest["ignored"] == ["notes.txt"]      # the .gif is read
    assert _repro(repo, env, "prepare") == []
    Image.new("RGB", (40, 40), (0, 9, 0)).save(src / "new.png")                        # add
    assert _repro(repo, env, "prepare") == ["prepare"]
    (src / "0.png").unlink()                                                          # remove
    assert _repro(repo, env, "prepare") == ["prepare"]
    Image.new("RGB", (40, 40), (0, 0, 200)).save(src / "1.png")                       # rewrite
    assert _repro(repo, env, "prepare") == ["prepare"]
    assert _repro(repo, env, "prepare") == []
    _set_params(repo, {"data": {"source": str(repo)}})
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "contains the repository itself" in out.stderr


def test_class_folders_with_a_train_val_split_run_end_to_end(workdir, tmp_path):
    """An ImageNet-shaped folder (train/<class>/, val/<class>/) through every stage, with
    training images stored larger and randomly cropped and flipped."""
    from PIL import Image

    root, env = workdir
    repo = _copy_with_outputs(root, tmp_path / "classes")
    src = tmp_path / "imagenet"
    rng = __import__("numpy").random.default_rng(0)
    for c, name in enumerate(["n01", "n02", "n03"]):
        for split, n in (("train", 24), ("val", 4)):
            (src / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (44 + i % 5, 40, 3)).astype("uint8") // (c + 1)
                Image.fromarray(pixels).save(src / split / name / f"{i}.jpg", quality=90)
    (src / "val" / "n02" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (src / "LOC_synset_mapping.txt").write_text("n01 a\nn02 b\nn03 c\n")
    _set_params(repo, {"data": {"source": str(src), "train_store_size": 36, "augment": "crop_flip", "workers": 2,
                                "shard_size": 32}})
    assert _repro(repo, env) == STAGES
    prepared = repo / "data" / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["layout"] == "train_val" and manifest["classes"] == ["n01", "n02", "n03"]
    assert manifest["counts"] == {"train": 72, "val": 12}
    assert [s["count"] for s in manifest["shards"]["train"]] == [32, 32, 8]
    assert manifest["stored_size"] == {"train": 36, "val": 32}
    assert manifest["unreadable_count"] == 1 and manifest["unreadable"][0]["path"] == "val/n02/broken.jpg"
    assert manifest["ignored"] == ["LOC_synset_mapping.txt"]
    rows = (prepared / "val-files.tsv").read_text().splitlines()
    assert rows[0] == "val/n01/0.jpg\t0" and rows[-1] == "val/n03/3.jpg\t2" and len(rows) == 12
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["num_images"] == 12 and metrics["fid_implementation"].startswith("clean-fid")
    # data.workers changes how the set is read, not what it holds: nothing reruns.
    _set_params(repo, {"data": {"workers": 1}})
    assert _repro(repo, env) == []


def test_two_processes_rerun_every_stage_after_prepare(workdir, tmp_path):
    """distributed.processes: 2 under `dvc repro`: each stage after prepare hands itself to
    torchrun (2 gloo processes); rank 0 alone writes and tracks. train_vq and k-means see the
    same global batches and latents as one process, so their numbers agree to rounding; refine_gan
    (per-rank BatchNorm in the discriminator) and train_prior (per-rank dropout) only closely."""
    root, env = workdir
    if not (root / "reports" / "metrics.json").exists():     # run on its own (-k)
        _repro(root, env)
    repo = _copy_with_outputs(root, tmp_path / "two")
    reports = {name: json.loads((repo / "reports" / f"{name}.json").read_text())
               for name in ("kmeans_init", "train_vq", "metrics")}
    _set_params(repo, {"distributed": {"processes": 2}})
    assert _repro(repo, env) == STAGES[1:]
    after = {name: json.loads((repo / "reports" / f"{name}.json").read_text()) for name in reports}
    assert after["kmeans_init"]["inertia"] == pytest.approx(reports["kmeans_init"]["inertia"], rel=1e-4)
    for key in ("final_loss", "final_rec_loss", "final_usage", "final_perplexity"):
        assert after["train_vq"][key] == pytest.approx(reports["train_vq"][key], rel=1e-3), key
    assert after["metrics"]["num_images"] == reports["metrics"]["num_images"]
    assert after["metrics"]["mse"] == pytest.approx(reports["metrics"]["mse"], rel=2e-2)
    assert not list((repo / "checkpoints").glob("*.pt"))
    # One MLflow run per stage (rank 0's), under one new parent.
    client, runs = _mlflow_children(repo)
    parent = runs[-1].data.tags["mlflow.parentRunId"]
    stages = [r.data.tags.get("nsvq.stage") for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(stages) == sorted(STAGES[1:]), stages
    # A user error under torchrun: one error line (rank 0's), exit status 2, the other rank stopped.
    (repo / "models" / "pretrain.pt").rename(tmp_path / "pretrain.pt")
    _one_error_line(_stage(repo, env, "kmeans_init"), "models/pretrain.pt is missing")
    (tmp_path / "pretrain.pt").rename(repo / "models" / "pretrain.pt")
    # The count is a param: changing it back makes every stage after prepare stale.
    _set_params(repo, {"distributed": {"processes": 1}})
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert all(f"{stage}:" in status.stdout for stage in STAGES[1:]), status.stdout
    assert "prepare:" not in status.stdout and "distributed.processes" in status.stdout, status.stdout


def _prefect_server_children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"create_app" in cmd:
            found.append(int(proc.name))
    return found


def test_a_killed_stage_leaves_no_process_and_its_runs_are_marked(workdir, tmp_path):
    import signal
    import sqlite3
    import time

    root, env = workdir
    repo = _copy_with_outputs(root, tmp_path / "kill")
    _set_params(repo, {"pretrain": {"steps": 400, "checkpoint_every": 20, "log_every": 20}})
    # No PREFECT_API_URL: the stage starts its own server (in a Prefect home of its own).
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = repo / "checkpoints" / "pretrain.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    servers = _prefect_server_children(proc.pid)
    assert checkpoint.exists() and proc.poll() is None and servers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{s}").exists() for s in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{s}").exists() for s in servers), "the stage's Prefect server outlived it"

    out = _stage(repo, env, "pretrain")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from step" in out.stderr
    client, runs = _mlflow_children(repo)
    attempts = [r for r in runs if r.data.tags.get("nsvq.stage") == "pretrain"][-2:]
    assert [r.info.status for r in attempts] == ["KILLED", "FINISHED"]
    assert attempts[0].data.tags["mlflow.parentRunId"] == attempts[1].data.tags["mlflow.parentRunId"]
    assert _metric_steps(client, attempts[1], "loss") == list(range(20, 401, 20))     # every step, one run
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        states = db.execute("select state_type from flow_run where name like '%pretrain' order by created").fetchall()
    assert [s for (s,) in states] == ["CRASHED", "COMPLETED"]
