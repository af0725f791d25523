"""The three non-stationary 2-D latent streams of the toy drift demos.

The NS-VQ paper's supplementary toy experiments (README "Toy Demo", videos translate.mp4
and shrink.mp4 of the reference repository) feed a quantizer latents whose distribution
moves while the codebook trains, standing in for an encoder that is still learning. Each
stream here maps a fixed base cloud x ~ Uniform(disc of radius RADIUS) by a map that
depends on the stream's progress u = t / T, t in [0, T):

- ``translation``: z = x + u * RADIUS * SHIFT. The centre travels 6 radii in a straight
  line, far beyond the initial support: codes placed on the t = 0 cloud are all left
  behind unless they move.
- ``expand_shrink``: z = s(u) R(pi/2 * u) x, an encoder-like linear map (the paper's
  "learned linear map") that turns a quarter turn while its scale grows log-linearly
  1 -> 2 over the first half and shrinks 2 -> 0.5 over the second. The end cloud covers a
  quarter of the initial area and 1/16 of the largest: codes outside it must contract with
  it to stay alive.
- ``split``: z = x + sign(x . v) * u * SPLIT * RADIUS * v, v = (1, 1)/sqrt(2). The two
  halves of the disc separate into opposite quadrants (I and III); the middle empties.

Why RADIUS = 3 and not 1: NS-VQ's kernel softmax(-||z - e||^2 / tau) has a bandwidth in
squared latent units (the paper notes it must suit the latent scale), and the toy keeps the
paper's tau0 = 1. With 64 codes on a disc of radius 3 the squared code spacing is about
0.05 * 9 = 0.44, i.e. tau0 is ~2 code spacings^2 and the kernel is local. On a unit disc
it would span the whole cloud (tau0 ~ 20 spacings^2), every code would be pulled towards
the cloud's mean and codes would pile up there once the cloud shrinks (measured: ~50% dead
at the end of expand_shrink). EMA's update is scale-equivariant, so the radius changes
nothing for it.

A batch is a pure function of (stream, t, T, n, generator state), so a seeded generator
reproduces a whole stream; :func:`stream_batches` is the seeded generator of batches.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

RADIUS = 3.0                # radius of the base cloud (the docstring says why not 1)
SHIFT = (6.0, 0.0)          # translation: total displacement of the centre, in radii
SCALE_PEAK = 2.0            # expand_shrink: scale at u = 0.5
SCALE_END = 0.5             # expand_shrink: scale at u = 1
TURN = math.pi / 2          # expand_shrink: total rotation
SPLIT = 4.0                 # split: each half's final displacement along +-v, in radii


def base_cloud(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points uniform in the unit disc (radius sqrt(U) makes the density uniform)."""
    r = torch.rand(n, generator=generator).sqrt() * RADIUS
    theta = torch.rand(n, generator=generator) * (2 * math.pi)
    return torch.stack([r * theta.cos(), r * theta.sin()], dim=1)


def _translation(x: torch.Tensor, u: float) -> torch.Tensor:
    return x + (u * RADIUS) * torch.tensor(SHIFT)


def expand_shrink_scale(u: float) -> float:
    """Log-linear 1 -> SCALE_PEAK on [0, 0.5], SCALE_PEAK -> SCALE_END on [0.5, 1]."""
    up, down = min(2 * u, 1.0), max(2 * u - 1.0, 0.0)
    return math.exp(up * math.log(SCALE_PEAK) + down * (math.log(SCALE_END) - math.log(SCALE_PEAK)))


def linear_map(u: float) -> torch.Tensor:
    """The expand_shrink map A(u) = s(u) R(TURN * u), (2, 2)."""
    a, s = TURN * u, expand_shrink_scale(u)
    return s * torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _expand_shrink(x: torch.Tensor, u: float) -> torch.Tensor:
    return x @ linear_map(u).T


def _split(x: torch.Tensor, u: float) -> torch.Tensor:
    v = torch.tensor([1.0, 1.0]) / math.sqrt(2.0)
    side = torch.where(x @ v >= 0, 1.0, -1.0)
    return x + (u * SPLIT * RADIUS) * side[:, None] * v


STREAMS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "translation": _translation,
    "expand_shrink": _expand_shrink,
    "split": _split,
}


def sample(stream: str, t: int, steps: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A batch (n, 2) of ``stream`` at time t of a stream lasting ``steps`` steps."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r} (known: {', '.join(STREAMS)})")
    if not 0 <= t < steps:
        raise ValueError(f"t={t} is outside [0, {steps})")
    return STREAMS[stream](base_cloud(n, generator), t / steps)


def stream_batches(stream: str, steps: int, n: int, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Seeded generator of (t, batch (n, 2)) for t = 0 .. steps - 1."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        yield t, sample(stream, t, steps, n, g)
