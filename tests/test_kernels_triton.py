"""The Triton kernels against the torch references, on the CPU under Triton's interpreter.

The whole suite runs with TRITON_INTERPRET=1 (tests/conftest.py sets it before anything imports
triton), so the kernels run on CPU tensors, in numpy: their arithmetic and host plumbing are
checked here, their compilation for the GPU in test_kernels_compile.py. Each case is its own
test; inputs are seeded per case (odd sizes, several launch configs, both kernel paths).
A full-size GPU run of the same comparisons is ``python bench/sweep_kernels.py search|ns``.
"""
from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch

from pipeline.config import QuantizerParams
from pipeline.configbase import build
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.ns_loss import ns_search_and_loss, ns_search_stats
from pipeline.quantizers.registry import METHODS
from pipeline.quantizers.search import nearest_code, nearest_code_torch
from tests.reference import ns_embedding_loss_dense, ns_stats_exact
from tools.host_sync import HostSyncRecorder

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
              # the interpreter computes padded lanes in numpy: exp2(-inf), 0 * inf are expected there
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]


@pytest.fixture(autouse=True)
def interpreter():
    from pipeline.kernels.launch import interpret_mode

    assert interpret_mode(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py)"


def gen_for(*case) -> torch.Generator:
    """A generator seeded by the case itself: every case has its own fixed inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def data(gen: torch.Generator, n: int, k: int, d: int, scale: float = 1.0):
    return torch.randn(n, d, generator=gen) * scale, torch.randn(k, d, generator=gen) * scale


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a norm-relative error; 0 when both are all-zero)."""
    a, b = a.double(), b.double()
    den = b.abs().max().item() if b.numel() else 0.0
    num = (a - b).abs().max().item() if b.numel() else 0.0
    return num / den if den > 0 else num


# ----------------------------------------------------------------------------------------------
# judging a kernel's results
# ----------------------------------------------------------------------------------------------
def assert_search(idx, dist, z, cb, rel_tie=1e-5):
    """(idx, dist) against nearest_code_torch: index mismatches only at near-ties (fp64 distances),
    indices in range, dist the exact ||z - c_idx||^2."""
    ridx, rdist = nearest_code_torch(z, cb)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    assert idx.shape == (z.shape[0],) and dist.shape == (z.shape[0],)
    if z.shape[0] == 0:
        return
    zf, cf = z.float(), cb.float()
    d64 = ((zf.double()[:, None, :] - cf.double()[None, :, :]) ** 2).sum(-1)
    bad = []
    for i in (idx != ridx).nonzero().flatten().tolist():
        two = d64[i].topk(min(2, d64.shape[1]), largest=False).values
        b1, b2 = two[0].item(), two[-1].item()
        near_tie = (b2 - b1) <= rel_tie * max(b1, 1e-30)
        ours_ok = (d64[i, idx[i]].item() - b1) <= rel_tie * max(b1, 1e-30)
        if not (near_tie and ours_ok):
            bad.append((i, idx[i].item(), ridx[i].item(), b1, b2))
    assert not bad, f"index mismatches that are not near-ties: {bad[:3]}"
    assert bool(((idx >= 0) & (idx < cb.shape[0])).all())
    exact = (zf - cf[idx]).pow(2).sum(1)
    assert ((dist - exact).abs() / exact.abs().clamp_min(1e-12)).max().item() <= 1e-5
    same = idx == ridx
    if same.any():
        assert ((dist[same] - rdist[same]).abs() / rdist[same].abs().clamp_min(1e-12)).max().item() <= 1e-5


def stats_tol(z, cb, tau, tol=1e-4):
    """``tol``, or fp32's own floor for the case where that is larger.

    A score is formed as ||e||^2 - 2 z.e in fp32, so it carries about 2^-24 (||z||^2 + ||e||^2)
    of absolute error, and a weight exp(-d / tau) that much / tau of relative error. That is the
    floor for a code whose weight is not negligible without being the winner (a near-tie within
    tau). At the stress cases (tau = 0.01, latents of scale 3) the floor is 1.9e-3 to 3.2e-3 at
    D = 8 and 6.2e-3 to 8.2e-3 at D = 40. Over 60 draws of each the kernel erred by 7e-8 / 5e-8 at
    the median and 3.5e-4 / 1.1e-3 at the most, at most 0.18 of the floor, so a flat 1e-4 failed
    at random. The online rescaling the cases exist for would be off by factors of 2."""
    zz = z.double().pow(2).sum(1).max() if z.numel() else 0.0
    ee = cb.double().pow(2).sum(1).max() if cb.numel() else 0.0
    return max(tol, float(zz + ee) / tau * 2.0 ** -24)


def assert_stats(stats, z, cb, win, tau, lam):
    """Kernel (total, s, M) for winners ``win`` against the fp64 statistics from the definition."""
    (tot, s, m), (rt, rs, rm) = stats, ns_stats_exact(z, cb, win, tau, lam)
    assert tot.dim() == 0 and s.shape == rs.shape and m.shape == rm.shape
    assert tot.dtype == s.dtype == m.dtype == torch.float32
    assert all(bool(torch.isfinite(x).all()) for x in (tot, s, m))
    tol = stats_tol(z, cb, tau)
    errs = rel_err(tot, rt), rel_err(s, rs), rel_err(m, rm)
    assert max(errs) <= tol, f"rel err total {errs[0]:.1e} s {errs[1]:.1e} M {errs[2]:.1e} (tol {tol:g})"


# ----------------------------------------------------------------------------------------------
# nearest-code search
# ----------------------------------------------------------------------------------------------
SEARCH_CASES = [   # (n, k, d, scale, config)
    (37, 131, 5, 1.0, None),
    (37, 131, 5, 1.0, {"SPLIT_K": 3}),                          # split-K + merge kernel
    (64, 1000, 8, 1.0, None),                                   # the target D
    (64, 1000, 8, 1.0, {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "SPLIT_K": 2}),
    (19, 300, 64, 1.0, None),                                   # tl.dot path
    (19, 300, 64, 1.0, {"SPLIT_K": 2, "BLOCK_K": 64}),
    (1, 2, 1, 1.0, None),
    (1, 2, 1, 1.0, {"SPLIT_K": 2}),
    (33, 257, 16, 1.0, None),                                   # largest FMA-path D
    (21, 70, 100, 1.0, None),                                   # dot path, D in two chunks
    (29, 45, 8, 1.0, {"path": "dot"}),                          # dot path forced at small D
    (19, 300, 64, 1.0, {"precision": "tf32x3"}),                # tensor-core variant (the interpreter
    (21, 70, 100, 1.0, {"precision": "tf32x3", "SPLIT_K": 2}),  # multiplies in fp32: plumbing only)
    (40, 150, 6, 8.0, None),                                    # large magnitudes: the expansion's cancellation
]


@pytest.mark.parametrize("n, k, d, scale, config", SEARCH_CASES)
def test_search_matches_torch(n, k, d, scale, config):
    from pipeline.kernels.search_triton import nearest_code_triton

    z, cb = data(gen_for(n, k, d, scale, config), n, k, d, scale)
    assert_search(*nearest_code_triton(z, cb, config=config), z, cb)


TIE_CONFIGS = [(5, None), (5, {"SPLIT_K": 3}), (24, None), (24, {"SPLIT_K": 2}), (24, {"precision": "tf32x3"})]


def tie_case(d: int):
    """Codes of small integers copied 23 / 46 / 76 positions apart, latents on or half-way off
    them: every product and sum is exact in fp32 (and in TF32), so duplicates tie exactly."""
    gen = gen_for("ties", d)
    base = torch.randint(-4, 5, (23, d), generator=gen).float()
    cb = torch.cat([base, base, base[:7], base])
    z = base[torch.randint(0, 23, (31,), generator=gen)] + 0.5 * torch.randint(-1, 2, (31, d), generator=gen).float()
    return base, cb, z


@pytest.mark.parametrize("d, config", TIE_CONFIGS)
def test_search_exact_ties_take_the_lowest_index(d, config):
    from pipeline.kernels.search_triton import nearest_code_triton

    base, cb, z = tie_case(d)
    idx, _ = nearest_code_triton(z, cb, config=config)
    assert bool((idx < 23).all()) and torch.equal(idx, nearest_code_torch(z, cb)[0])
    idx, dist = nearest_code_triton(base[:9].clone(), cb, config=config)      # z exactly on codes
    first = torch.tensor([int((base == base[j]).all(1).nonzero()[0]) for j in range(9)])
    assert torch.equal(idx, first) and bool((dist == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_search_upcasts_half_inputs(dtype):
    from pipeline.kernels.search_triton import nearest_code_triton

    z, cb = data(gen_for("half", dtype), 27, 90, 8)
    idx, dist = nearest_code_triton(z.to(dtype), cb.to(dtype))
    ridx, _ = nearest_code_torch(z.to(dtype), cb.to(dtype))
    assert (idx == ridx).float().mean() >= 0.95 and dist.dtype == torch.float32


def test_search_non_contiguous_and_empty_inputs():
    from pipeline.kernels.search_triton import nearest_code_triton

    gen = gen_for("layout")
    cb = torch.randn(90, 8, generator=gen)
    zt = torch.randn(8, 33, generator=gen).t()                 # (33, 8) non-contiguous
    assert_search(*nearest_code_triton(zt, cb), zt, cb)
    idx, dist = nearest_code_triton(torch.zeros(0, 4), torch.randn(5, 4, generator=gen))
    assert idx.shape == (0,) and dist.shape == (0,)


def test_search_dispatch_and_bad_configs():
    from pipeline.kernels.search_triton import nearest_code_triton

    z, cb = data(gen_for("dispatch"), 45, 200, 8)
    a, b = nearest_code(z, cb, backend="triton"), nearest_code_triton(z, cb)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(nearest_code(z, cb, backend="torch")[0], b[0])
    z, cb = data(gen_for("dispatch", 40), 30, 120, 40)
    a = nearest_code(z, cb, backend="triton", precision="tf32x3", config={"BLOCK_N": 16})
    assert torch.equal(a[0], nearest_code_triton(z, cb, config={"precision": "tf32x3", "BLOCK_N": 16})[0])
    with pytest.raises(ValueError, match="precision"):
        nearest_code_triton(z, cb, config={"precision": "tf32"})
    with pytest.raises(ValueError, match="BLOCKN"):
        nearest_code_triton(z, cb, config={"BLOCKN": 64})


# ----------------------------------------------------------------------------------------------
# NSVQ's kernels: the row pass (search + log-sum-exp) and the per-code pass
# ----------------------------------------------------------------------------------------------
NS_CASES = [   # (n, k, d, tau, lam, scale, config)
    (37, 131, 5, 0.5, 0.01, 1.0, None),
    (37, 131, 5, 0.5, 0.01, 1.0, {"C_SPLIT": 3, "F_BLOCK_K": 64}),
    (64, 1000, 8, 1.0, 0.01, 1.0, None),                    # the target D
    (40, 200, 8, 0.1, 2.0, 1.0, {"C_SPLIT": 2, "F_BLOCK_N": 32}),
    (23, 61, 16, 0.7, 0.3, 1.0, None),                      # largest FMA-path D
    (30, 10, 6, 0.5, 0.05, 1.0, None),                      # K < tile: slots that never see a code
    (1, 2, 1, 1.0, 1.0, 1.0, None),
    (50, 77, 17, 0.2, 0.0, 1.0, None),                      # dot path, lam = 0: only the winners
    (19, 300, 64, 0.3, 0.05, 1.0, None),                    # dot path
    (19, 300, 64, 0.3, 0.05, 1.0, {"C_SPLIT": 2}),
    (21, 70, 100, 0.5, 0.02, 1.0, {"C_SPLIT": 2}),          # dot path, D in two chunks
    (19, 300, 64, 0.3, 0.05, 1.0, {"precision": "tf32x3"}), # tensor-core variant (plumbing)
    (21, 70, 100, 0.5, 0.02, 1.0, {"precision": "tf32x3", "C_SPLIT": 2}),
    (19, 300, 64, 0.3, 0.05, 1.0, {"F_BLOCK_D": 16}),       # D in four chunks
    (33, 257, 8, 0.01, 0.01, 3.0, None),                    # exponents spanning > 2^10: the
    (33, 257, 40, 0.01, 0.01, 3.0, None),                   # online rescaling must stay exact
]


def assert_ns_kernels(z, cb, tau, lam, config=None):
    """ns_search_stats_triton against nearest_code_triton (same config family) and the fp64
    statistics for its own winners: the FMA path's scores are bit-identical to the search
    kernel's, so the indices must be equal there; the dot path sums in another D chunking, so
    near-ties may swap."""
    from pipeline.kernels.launch import FMA_MAX_D
    from pipeline.kernels.ns_fused_triton import ns_search_stats_triton
    from pipeline.kernels.search_triton import nearest_code_triton

    idx, dist, tot, s, m = ns_search_stats_triton(z, cb, tau, lam, config=config)
    search_cfg = {"precision": config["precision"]} if config and "precision" in config else None
    sidx, sdist = nearest_code_triton(z, cb, config=search_cfg)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32 and idx.shape == (z.shape[0],)
    if z.shape[1] <= FMA_MAX_D:
        assert torch.equal(idx, sidx) and torch.equal(dist, sdist), f"{int((idx != sidx).sum())} differ"
    else:
        assert_search(idx, dist, z, cb)
    assert_stats((tot, s, m), z, cb, idx, tau, lam)


@pytest.mark.parametrize("n, k, d, tau, lam, scale, config", NS_CASES)
def test_ns_kernels_match_the_definition(n, k, d, tau, lam, scale, config):
    z, cb = data(gen_for(n, k, d, tau, lam, scale, config), n, k, d, scale)
    assert_ns_kernels(z, cb, tau, lam, config)


@pytest.mark.parametrize("d", [5, 24])
def test_ns_kernels_exact_ties_take_the_lowest_index(d):
    from pipeline.kernels.ns_fused_triton import ns_search_stats_triton

    base, cb, z = tie_case(d)
    z = torch.cat([base[:9], z[:20]])
    assert bool((ns_search_stats_triton(z, cb, 0.5, 0.01)[0] < 23).all())
    assert_ns_kernels(z, cb, 0.5, 0.01)


def test_ns_torch_path_search_is_nearest_code_torch_bit_for_bit():
    z, cb = data(gen_for("ns torch"), 45, 200, 8)
    idx, dist, *_ = ns_search_stats(z, cb, 0.5, 0.01, chunk_size=16)
    ridx, rdist = nearest_code_torch(z, cb, chunk_size=16)
    assert torch.equal(idx, ridx) and torch.equal(dist, rdist)


@pytest.mark.parametrize("n, k, d, tau, lam", [(48, 150, 8, 0.5, 0.01), (17, 90, 5, 1.0, 0.2),
                                               (13, 40, 32, 0.4, 0.05), (45, 200, 8, 0.5, 0.01)])
def test_ns_search_and_loss_triton_equals_torch_and_the_dense_reference(n, k, d, tau, lam):
    z, cb0 = data(gen_for("loss", n, k, d), n, k, d)
    out = {}
    for backend in ("torch", "triton"):
        cb = cb0.clone().requires_grad_(True)
        idx, _, loss = ns_search_and_loss(z, cb, tau, lam, backend=backend)
        loss.backward()
        out[backend] = (idx, loss.detach(), cb.grad.clone())
    cb = cb0.clone().requires_grad_(True)
    dense = ns_embedding_loss_dense(z, cb, tau, lam)
    dense.backward()
    (ti, tl_, tg), (ri, rl, rg) = out["triton"], out["torch"]
    assert torch.equal(ti, ri)
    assert rel_err(tl_, rl) <= 1e-4 and rel_err(tg, rg) <= 1e-4
    assert rel_err(tl_, dense.detach()) <= 1e-4 and rel_err(tg, cb.grad) <= 1e-4
    if d > 16:   # precision="tf32x3" reaches both passes (fp32 in the interpreter: same values)
        cb = cb0.clone().requires_grad_(True)
        _, _, loss = ns_search_and_loss(z, cb, tau, lam, backend="triton", precision="tf32x3")
        loss.backward()
        assert rel_err(loss.detach(), rl) <= 1e-4 and rel_err(cb.grad, rg) <= 1e-4


def test_ns_kernels_empty_input_and_bad_configs():
    from pipeline.kernels.ns_fused_triton import ns_search_stats_triton

    idx, dist, tot, s, m = ns_search_stats_triton(torch.zeros(0, 3), torch.randn(4, 3), 1.0, 0.1)
    assert idx.shape == (0,) and float(tot) == 0.0 and m.shape == (4, 3)
    for bad, key in (({"precision": "tf32"}, "precision"), ({"F_BLOCK_D": 48}, "F_BLOCK_D"),
                     ({"R_BLOCK_N": 64}, "R_BLOCK_N")):
        with pytest.raises(ValueError, match=key):
            ns_search_stats_triton(torch.randn(3, 20), torch.randn(4, 20), 1.0, 0.1, config=bad)


# ----------------------------------------------------------------------------------------------
# every quantizer's training step on the kernel path
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, precision", [(8, "fp32"), (40, "fp32"), (40, "tf32x3")])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_quantizer_step_on_the_kernels_has_no_host_sync_and_no_n_by_k_tensor(method, d, precision):
    """Each method's forward + backward with the search on the Triton kernels (as on CUDA): no op
    that makes the host wait for a GPU, and no tensor as large as an fp32 N x K one. Under the
    interpreter the kernels' tiles are numpy, so what is recorded is the host code's own tensors:
    the score matrix must never be one of them. Gumbel is left out of the size check: its logits
    are N x K by definition, and it never searches."""
    b, h, w, k = 4, 6, 8, 64           # N = 192 latents: an fp32 N x K is 48 KiB, z (D = 40) 30 KiB
    extra = {"transvq": {"model_dim": 16}} if method == "transvq" else {}
    qp = build(QuantizerParams, {"method": method, "codebook_size": k,
                                 "search": {"precision": precision, "backend": "triton"}, **extra}, "quantizer")
    gen = gen_for("step", method, d, precision)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    q = build_quantizer(qp, d)
    q.set_progress(10_000, 3.0)           # past SF-DiVeQ's warm-up: its curve search runs
    z = torch.randn(b, d, h, w, generator=gen, requires_grad=True)
    with HostSyncRecorder() as rec:
        out = q(z)
        (out.z_q.square().mean() + out.loss).backward()
    assert not rec.syncs, rec.syncs
    if method != "gumbel":
        largest = max(rec.outputs, key=lambda o: o[2])
        assert largest[2] < 4 * b * h * w * k, f"largest tensor {largest}"


def test_kernel_modules_import_without_running():
    """The quantizer modules import without the kernels (lazy import)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import pipeline.quantizers.search as s, pipeline.quantizers.ns_loss as n, sys; "
            "assert 'pipeline.kernels.search_triton' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_kernel_config_params_name_the_kernels_keys():
    """quantizer.search.kernel / ns_kernel (typed params) list exactly the keys the kernels' default
    configs have (precision is quantizer.search.precision), and the search's names match the params'."""
    import dataclasses
    import typing

    from pipeline.config import NSKernelParams, SearchKernelParams, SearchParams
    from pipeline.kernels.ns_loss_triton import default_ns_config
    from pipeline.kernels.search_triton import default_config
    from pipeline.quantizers.search import BACKENDS, KERNEL_PRECISIONS

    for d in (8, 64):
        assert {f.name for f in dataclasses.fields(SearchKernelParams)} == set(default_config(100, 100, d)) - {"precision"}
        assert {f.name for f in dataclasses.fields(NSKernelParams)} == set(default_ns_config(100, 100, d)) - {"precision"}
    hints = typing.get_type_hints(SearchParams)
    assert set(typing.get_args(hints["precision"])) == set(KERNEL_PRECISIONS)
    assert set(typing.get_args(hints["backend"])) == set(BACKENDS)
