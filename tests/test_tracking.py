"""MLflow tracking: parent per pipeline execution, child per stage, git commit tags."""
from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline import tracking  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NSVQ_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def _runs(root):
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nsvq-pipeline")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_stages_of_one_execution_share_a_parent(store):
    with tracking.stage_run("prepare") as r1:
        r1.log_metrics({"loss": 1.0}, step=1)
        r1.log_metrics({"loss": 0.5}, step=2)
    with tracking.stage_run("pretrain") as r2:
        r2.log_params({"model": {"width": 8}})
    assert r1.parent_id == r2.parent_id
    # a rerun of a stage that already reported under this parent starts a new execution
    with tracking.stage_run("prepare") as r3:
        pass
    assert r3.parent_id != r1.parent_id
    # changed params: a new parent as well
    (store / "params.yaml").write_text("a: 2\n")
    with tracking.stage_run("pretrain") as r4:
        pass
    assert r4.parent_id not in (r1.parent_id, r3.parent_id)

    client, runs = _runs(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.data.tags[tracking.STAGE_TAG] for r in children] == ["prepare", "pretrain", "prepare", "pretrain"]
    assert all("git_commit" in r.data.tags for r in runs)
    hist = client.get_metric_history(r1.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(1, 1.0), (2, 0.5)]
    assert client.get_run(r2.run_id).data.params == {"model.width": "8"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_failed_stage_marks_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("train_vq"):
            raise RuntimeError("boom")
    _, runs = _runs(store)
    child = [r for r in runs if r.data.tags.get(tracking.STAGE_TAG) == "train_vq"][0]
    assert child.info.status == "FAILED"


def test_explicit_parent_and_tracking_uri_override(store, monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == uri
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("nsvq-pipeline")
    parent = client.create_run(exp).info.run_id
    monkeypatch.setenv("NSVQ_PARENT_RUN_ID", parent)
    with tracking.stage_run("evaluate") as r:
        r.log_metrics({"rfid": 3.0}, parent=True)
    assert r.parent_id == parent
    assert client.get_run(parent).data.metrics["rfid"] == 3.0


def test_log_summary_logs_numbers_to_the_stage_and_the_parent(store):
    summary = {"bits_per_token": 4.5, "steps": 10, "ok": True, "method": "nsvq", "curve": [1.0, 2.0],
               "skipped": None}
    with tracking.stage_run("train_prior") as r:
        logged = r.log_summary(summary, parent_prefix="train_prior")
    with tracking.stage_run("evaluate") as e:
        e.log_summary({"rfid": 3.0})
    with tracking.stage_run("refine_gan") as g:
        g.log_summary({"d_loss": 0.5}, parent_prefix=None)
    assert logged == {"bits_per_token": 4.5, "steps": 10}
    client, _ = _runs(store)
    assert client.get_run(r.run_id).data.metrics == {"bits_per_token": 4.5, "steps": 10.0}
    assert client.get_run(r.parent_id).data.metrics == {"train_prior/bits_per_token": 4.5,
                                                        "train_prior/steps": 10.0, "rfid": 3.0}
    assert client.get_run(g.run_id).data.metrics == {"d_loss": 0.5}


def test_a_run_left_running_by_a_dead_process_is_marked_killed(store):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "print(__import__('os').getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    token = f"{tracking.process_token().rsplit(':', 2)[0]}:{pid}:?"
    assert not tracking.token_alive(token) and tracking.token_alive(tracking.process_token())
    with tracking.stage_run("train_vq") as first:
        first.client.set_tag(first.run_id, tracking.PROCESS_TAG, token)   # as if that process had run it
        first.client.set_terminated(first.run_id, "RUNNING")
        client = first.client
    client.update_run(first.run_id, status="RUNNING")
    with tracking.stage_run("train_vq") as second:
        pass
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert second.parent_id == first.parent_id        # a killed attempt does not count as done


def test_runs_are_named_by_method_and_codebook_size(store, monkeypatch):
    (store / "params.yaml").write_text("quantizer: {method: ema, codebook_size: 64}\n")
    monkeypatch.setenv("DVC_EXP_NAME", "wide")
    with tracking.stage_run("train_vq") as r:
        pass
    client, runs = _runs(store)
    assert {x.info.run_name for x in runs} == {"wide ema K=64", "wide ema K=64 train_vq"}
    assert client.get_experiment_by_name("nsvq-pipeline").tags["mlflow.experimentKind"] == "custom_model_development"
    assert r.parent_id


def test_a_stage_metric_is_found_by_dvc_experiment_name(store, monkeypatch):
    for name, seconds in (("study-vq-k16", 12.5), ("study-ema-k16", 30.0)):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        with tracking.stage_run("train_vq") as r:
            r.log_summary({"train_seconds": seconds})
    assert tracking.experiment_stage_metric(store, "train_vq", ["study-vq-k16", "study-ema-k16", "nope"],
                                            "train_seconds") == {"study-vq-k16": 12.5, "study-ema-k16": 30.0}
