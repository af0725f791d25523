"""Train one quantizer on one drifting toy stream and record its codebook health over time.

``run_toy(stream, method, ...)`` builds the method from ``pipeline.quantizers`` as the
pipeline does (``build_quantizer`` on a validated ``QuantizerParams`` with its defaults,
the values params.yaml ships: ``ema`` is EMAVQ with decay 0.99 and ``nsvq`` is NSVQ with
the paper's lambda = 0.01, tau0 = 1, tau x 0.9 per epoch), starts every method whose table takes the
k-means init from the same k-means codes of the t = 0 distribution, then feeds it one
batch per step of the stream. The latents are data here, not an encoder output, so:

- EMA (a codebook that is a buffer) learns from its own forward and needs no optimizer;
- every method with parameters is trained by Adam on ``out.loss`` plus the reconstruction
  loss of an identity decoder, mean ||z_q - z||^2: in the pipeline the decoder gradient is
  the only codebook signal of DiVeQ, SimVQ, rotation, ... and it is all a decoder could ask
  of z_q here. For VQ and NSVQ it adds nothing or next to nothing (the STE passes no
  gradient to the code; the modified STE passes a = 2 alpha / numel(z) of it).

No dead-code replacement unless the overrides name a policy: the demo is about the update
rule itself.

Recorded every ``log_every`` steps (``step`` = updates done):

- ``dead_fraction``: the share of codes that won no latent of the training batches of the
  last ``window`` steps (of all steps so far, early on). A code the current distribution
  never selects is dead wherever it sits; with the defaults the window holds
  50 x 256 = 12,800 assignments, 200 per code on average, so a live code is not missed by
  chance.
- ``perplexity``: exp(entropy) of the assignment histogram over the same window.
- ``quant_error``: mean ||z - q(z)||^2 (summed over the two dimensions) on a fresh batch
  drawn at the current time from an independent generator, the quantizer in eval mode.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch

from .streams import sample, stream_batches

METRICS = ("dead_fraction", "quant_error", "perplexity")


@dataclass(frozen=True)
class ToyConfig:
    """Hyperparameters of a toy run (the defaults are the ones reported in reports/toy/)."""
    steps: int = 1000               # T: stream length, one batch per step
    codebook_size: int = 64
    seed: int = 0
    batch_size: int = 256
    eval_size: int = 1024
    window: int = 50                # dead-code window, in steps
    log_every: int = 10
    # Adam step size ~ lr per step whatever the gradient's size; 0.03 = 1% of the cloud
    # radius, above the fastest drift (translation, 0.6% of the radius per step). Below
    # the drift speed no gradient-trained codebook can follow, NS included.
    lr: float = 3e-2
    steps_per_epoch: int = 100      # NSVQ decays tau once per epoch: 1 -> 0.9^9 = 0.39
    replacement_period: int = 100   # only when the overrides switch a replacement policy on
    overrides: dict = field(default_factory=dict)   # nested ``quantizer`` section overrides

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ToyResult:
    stream: str
    method: str
    config: ToyConfig
    rows: list[dict] = field(default_factory=list)     # step, dead_fraction, quant_error, perplexity
    codebook: torch.Tensor | None = None               # final effective codebook (K, 2)
    final_batch: torch.Tensor | None = None            # the last evaluation batch (for scatters)
    final_counts: torch.Tensor | None = None           # assignments per code in the last window

    @property
    def final(self) -> dict:
        return self.rows[-1]


class WindowUsage:
    """Assignment histograms of the last ``window`` steps (a ring buffer of (window, K))."""

    def __init__(self, codebook_size: int, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.hist = torch.zeros(window, codebook_size)
        self.seen = 0

    def add(self, indices: torch.Tensor) -> None:
        k = self.hist.shape[1]
        self.hist[self.seen % self.hist.shape[0]] = torch.bincount(indices.reshape(-1), minlength=k).float()
        self.seen += 1

    def counts(self) -> torch.Tensor:
        return self.hist[:min(self.seen, self.hist.shape[0])].sum(0)

    def dead_fraction(self) -> float:
        return (self.counts() == 0).float().mean().item()

    def perplexity(self) -> float:
        c = self.counts()
        p = c / c.sum().clamp_min(1.0)
        return torch.special.entr(p).sum().exp().item()


def flat_indices(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Indices on one histogram axis; a residual VQ's (N, L) indices get level offsets l * K."""
    if indices.dim() == 2:
        indices = indices + torch.arange(indices.shape[1]) * codebook_size
    return indices.reshape(-1)


def build_toy_quantizer(method: str, codebook_size: int, overrides: dict | None = None):
    """(QuantizerParams, quantizer) for 2-D latents: the ``quantizer`` section's defaults,
    replacement off, then the nested ``overrides``."""
    from ..config import QuantizerParams
    from ..configbase import build
    from ..quantizers import build_quantizer

    section = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (overrides or {}).items()}
    section.update(method=method, codebook_size=codebook_size)
    section.setdefault("replacement", {}).setdefault("policy", "none")
    qp = build(QuantizerParams, section, "quantizer")
    return qp, build_quantizer(qp, 2)


def initial_codes(stream: str, steps: int, codebook_size: int, seed: int, n: int = 4096) -> torch.Tensor:
    """k-means (k-means++, 20 Lloyd steps) on n points of the stream at t = 0, as the
    pipeline's kmeans_init stage does on the pretrained encoder's latents."""
    from ..kmeans import kmeans

    g = torch.Generator().manual_seed(seed + 2)
    return kmeans(sample(stream, 0, steps, n, g), codebook_size, iters=20, seed=seed).centers


@contextlib.contextmanager
def toy_torch_settings():
    """One intra-op thread and denormals flushed, restored afterwards. The tensors are tiny:
    more threads only add synchronisation, and on a busy machine their spin-waits slow a
    run down by 10x or more. The NS softmax of far codes underflows into denormals, ~3x
    slower on x86 CPUs and of no weight; flushing them leaves the results unchanged here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def run_toy(stream: str, method: str, **config) -> ToyResult:
    """Train ``method`` on ``stream``; keyword arguments are :class:`ToyConfig` fields
    (steps, codebook_size, seed, ..., overrides={"nsvq": {"lam": 0.02}})."""
    cfg = ToyConfig(**config)
    with toy_torch_settings():
        return _run(stream, method, cfg)


def _run(stream: str, method: str, cfg: ToyConfig) -> ToyResult:
    from ..quantizers.replacement import CodeReplacement

    torch.manual_seed(cfg.seed)     # method-internal randomness (random tables, noise, Gumbel draws)
    qp, q = build_toy_quantizer(method, cfg.codebook_size, cfg.overrides)
    if q.uses_kmeans_init:
        q.init_codebook(initial_codes(stream, cfg.steps, cfg.codebook_size, cfg.seed))
    params = [p for p in q.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr) if params else None
    rp = qp.replacement
    replacement = CodeReplacement(rp.policy, cfg.replacement_period, rp.threshold, rp.perturb)
    usage = WindowUsage(cfg.codebook_size * qp.levels, cfg.window)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    result = ToyResult(stream, method, cfg)
    q.train()
    for t, z in stream_batches(stream, cfg.steps, cfg.batch_size, cfg.seed):
        q.set_progress(t, t / cfg.steps_per_epoch, cfg.steps)
        out = q(z)
        usage.add(flat_indices(out.indices.detach(), cfg.codebook_size))
        if opt is not None:
            loss = out.loss + (out.z_q - z).pow(2).mean()      # + the identity decoder's loss
            if loss.requires_grad:                             # (SF-DiVeQ's warm-up has none)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        replacement(q, t + 1)
        if (t + 1) % cfg.log_every == 0 or t + 1 == cfg.steps:
            err, z_eval = _eval_error(q, stream, t, cfg, eval_gen)
            result.rows.append({"step": t + 1, "dead_fraction": usage.dead_fraction(),
                                "quant_error": err, "perplexity": usage.perplexity()})
    result.codebook = q.codebook.detach().clone()
    result.final_batch = z_eval
    result.final_counts = usage.counts()
    return result


@torch.no_grad()
def _eval_error(q, stream: str, t: int, cfg: ToyConfig, gen: torch.Generator) -> tuple[float, torch.Tensor]:
    z = sample(stream, t, cfg.steps, cfg.eval_size, gen)
    q.eval()
    out = q(z)
    q.train()
    zq = out.hard if out.hard is not None else out.z_q
    return (z - zq).pow(2).sum(1).mean().item(), z
