"""Real multi-process runs on the CPU (torchrun, gloo, 2 processes) of the training loop, the
quantizers' reductions and k-means: tests/dist_worker.py is one rank."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.training.checkpoint import verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
# 2 ranks x global batch / 2 against 1 rank x global batch, loss at every one of 100 steps: the
# batches and the RNG are the same, so only the summation order of the gradient all-reduce
# differs (measured at most 2.6e-7 relative for vq, ema, nsvq).
CURVE_RTOL = 1e-5


def torchrun(n: int, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                           str(WORKER), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ranks(out: Path, scenario: str, n: int) -> list[dict]:
    return [torch.load(out / f"{scenario}-rank{r}.pt") for r in range(n)]


def launch(n: int, scenario: str, out: Path, *args) -> list[dict]:
    done = torchrun(n, scenario, out, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return ranks(out, scenario, n)


@pytest.fixture(scope="module")
def methods(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    return launch(2, "methods", out / "two"), launch(1, "methods", out / "one")[0]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0)
               for k in a if torch.is_tensor(a[k]))


def test_every_method_keeps_identical_state_on_both_ranks(methods):
    (r0, r1), _ = methods
    assert len(r0) == 16       # every registered method, a 2-level residual nsvq, vq with random replacement
    for run, got in r0.items():
        history = got["history"]
        assert history[-1]["step"] == 100, run
        if "gumbel" not in run and "sf_diveq" not in run and "simvq" not in run and "transvq" not in run:
            assert sum(r.get("codes_replaced", 0) for r in history) > 0, f"{run}: no code was replaced"
        # weights, codebooks and every buffer (EMA tables, usage counts) bit for bit
        assert max_abs_diff(got["state"], r1[run]["state"]) == 0, run
        assert history == r1[run]["history"], run           # the logged means are the ranks' mean


@pytest.mark.parametrize("run", ["vq-L1-importance", "ema-L1-importance", "nsvq-L1-importance"])
def test_two_ranks_of_half_the_batch_follow_one_rank_of_the_whole(methods, run):
    (two, _), one = methods
    curve2 = torch.tensor([r["loss"] for r in two[run]["history"]], dtype=torch.float64)
    curve1 = torch.tensor([r["loss"] for r in one[run]["history"]], dtype=torch.float64)
    assert len(curve1) == len(curve2) == 100
    assert ((curve2 - curve1).abs() / curve1.abs()).max().item() < CURVE_RTOL


def test_kmeans_over_two_ranks_is_the_one_rank_fit(tmp_path):
    (two, _), (one,) = launch(2, "kmeans", tmp_path / "two"), launch(1, "kmeans", tmp_path / "one")
    assert abs(two["inertia"] - one["inertia"]) <= 1e-5 * one["inertia"]
    assert torch.allclose(two["centers"], one["centers"], atol=1e-5)


def test_a_two_rank_run_resumes_on_two_ranks_to_the_uninterrupted_weights(tmp_path):
    straight, _ = launch(2, "resume", tmp_path / "straight", tmp_path / "a.pt", "go")
    ckpt = tmp_path / "b.pt"
    launch(2, "resume", tmp_path / "first", ckpt, "stop")
    assert verify_checkpoint(ckpt) is None
    resumed, other = launch(2, "resume", tmp_path / "second", ckpt, "go")
    assert resumed["resumed_from"] == 30
    assert max_abs_diff(resumed["state"], straight["state"]) == 0
    assert max_abs_diff(resumed["state"], other["state"]) == 0
    assert resumed["history"] == straight["history"]


def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    # Same batches (the global batch does not depend on the ranks) and the same RNG: the one-rank
    # continuation differs from the two-rank one only by the gradient's summation order.
    straight, _ = launch(2, "resume", tmp_path / "straight", tmp_path / "a.pt", "go")
    ckpt = tmp_path / "b.pt"
    launch(2, "resume", tmp_path / "first", ckpt, "stop")
    (resumed,) = launch(1, "resume", tmp_path / "second", ckpt, "go")
    assert resumed["resumed_from"] == 30
    assert max_abs_diff(resumed["state"], straight["state"]) < 1e-4


def test_a_rank_that_dies_ends_the_job_and_leaves_the_checkpoint_intact(tmp_path):
    ckpt = tmp_path / "c.pt"
    t0 = time.monotonic()
    done = torchrun(2, "die", tmp_path / "out", ckpt, timeout=300)
    took = time.monotonic() - t0
    assert done.returncode != 0
    assert "rank" in done.stderr and "exitcode" in done.stderr and "-9" in done.stderr, done.stderr[-2000:]
    assert took < 120
    assert verify_checkpoint(ckpt) is None
    assert torch.load(ckpt, weights_only=True)["step"] == 20


def test_refine_gan_keeps_the_ranks_identical(tmp_path):
    r0, r1 = launch(2, "gan", tmp_path)
    for train in ("decoder", "decoder_encoder_codebook"):
        assert any("g_loss" in row for row in r0[train]["history"]), "the GAN term never switched on"
        assert max_abs_diff(r0[train]["state"], r1[train]["state"]) == 0, train
        assert max_abs_diff(r0[train]["disc"], r1[train]["disc"]) == 0, train
        assert r0[train]["history"] == r1[train]["history"]


def test_train_prior_keeps_the_ranks_identical_and_shares_the_samples(tmp_path):
    r0, r1 = launch(2, "prior", tmp_path)
    assert max_abs_diff(r0["state"], r1["state"]) == 0
    assert r0["history"] == r1["history"]
    # 5 samples: 3 drawn by rank 0, 2 by rank 1, every rank holds all 5
    assert r0["tokens"].shape == (5, 4, 4) and torch.equal(r0["tokens"], r1["tokens"])
    assert torch.equal(r0["samples"], r1["samples"])
