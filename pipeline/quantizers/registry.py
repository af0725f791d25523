"""The method registry: each quantizer method's name, class, options and defaults, written once.

``METHODS`` maps a ``quantizer.method`` name to a :class:`Method`: the class (by import path,
loaded on first use), its options dataclass (the ``quantizer.<name>`` section of params.yaml,
defaults and bounds in one place) and the two lines of documentation the README's method
table is made from (``python -m pipeline.quantizers.registry`` prints that table; a test keeps
the README in step). This module needs no torch, so params validation (pipeline/config.py)
and anything that only lists methods stay light; :func:`build_quantizer` imports the classes.

A method's class reads its options as ``self.options`` (the base class finds the options type
here, by the class's import path); none of its defaults is written anywhere else.

Adding a method (README, "Adding a method"):
  1. ``pipeline/quantizers/<name>.py``: a :class:`~pipeline.quantizers.base.Quantizer` subclass
     that implements ``quantize_flat`` and reads ``self.options``;
  2. here: its options dataclass (or :class:`NoOptions`) and one ``METHODS`` line;
  3. params.yaml: its ``quantizer.<name>`` section (``{}`` without options): DVC reads the
     selected method's section, so it must exist;
  4. a test pinning its formula on a hand-checkable case; the contract tests pick the method up
     from ``METHODS`` by themselves.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Literal

from ..configbase import fail, param


# ----------------------------------------------------------------------------------------------
# options (one dataclass per method; params.yaml quantizer.<method>)
# ----------------------------------------------------------------------------------------------
@dataclass
class NoOptions:
    """The method has no options of its own."""


@dataclass
class NSVQOptions:
    """Dense non-stationary embedding loss + modified STE (NS-VQ paper)."""
    lam: float = param(0.01, ge=0, doc="lambda: weight scale of non-selected codes, w = min(1, lambda K softmax)")
    tau0: float = param(1.0, gt=0, doc="initial softmax temperature (paper: 1)")
    tau_decay: float = param(0.9, gt=0, le=1, doc="tau = tau0 * tau_decay ** epoch (paper 0.9, reference code 0.5)")
    alpha: float = param(1.0, ge=0, doc="modified STE: a = 2 alpha / numel(z)")


@dataclass
class EMAOptions:
    """Codebook as Laplace-smoothed moving averages of counts and sums (VQ-VAE appendix)."""
    decay: float = param(0.99, gt=0, lt=1, doc="EMA decay of counts and sums")
    eps: float = param(1e-5, gt=0, doc="Laplace smoothing of the counts")


@dataclass
class RotationOptions(EMAOptions):
    """The rotation trick's EMA codebook; decay 0.8 as in the paper's code (VQ-VAE's is 0.99)."""
    decay: float = param(0.8, gt=0, lt=1, doc="EMA decay of counts and sums (the rotation trick's code: 0.8)")


@dataclass
class FCOptions:
    """Factorized, l2-normalized codes (ViT-VQGAN)."""
    code_dim: int = param(0, ge=0, doc="dimension of the code space the lookup runs in; 0: model.code_dim, as in "
                                       "the NS-VQ paper's tables (FC at the tables' code dims 3 and 64; "
                                       "ViT-VQGAN: 32; this project's default before: 8)")


@dataclass
class TransVQOptions:
    """Frozen codebook through one pre-LN linear-attention block (TransVQ)."""
    model_dim: int = param(256, ge=1, doc="width of the codebook transformer")
    mlp_ratio: float = param(2.0, gt=0, doc="MLP hidden width / model_dim")
    learned_pos: bool = param(True, doc="add a learned per-code position embedding (reference code)")
    pos_std: float = param(1.0, ge=0, doc="std of the positions' random init: 1 is nn.Embedding's N(0, 1) of the "
                                          "reference (norm ~16 at model_dim 256, swamping the projected codes, "
                                          "~1); 0: zeros")


NOISE_VAR_DOC = ("variance of the directional noise v ~ N(0, noise_var I): the DiVeQ paper's 1e-3 (std 0.032). "
                 "The reference code passes its noise_var (1e-3) as the std of Normal(0, noise_var), i.e. a "
                 "variance of 1e-6: set 1e-6 for the reference's noise")


@dataclass
class DiVeQOptions:
    """DiVeQ's directional noise, and the structure of a residual stack (quantizer.levels > 1)."""
    noise_var: float = param(1e-3, ge=0, le=1, doc=NOISE_VAR_DOC)
    residual: Literal["levels", "sum"] = param(
        "levels", doc="levels: one DiVeQ per level (each level quantizes the true residual); sum: the reference "
                      "residual_diveq.py, hard residual VQ over all levels, then one DiVeQ on their sum")


@dataclass
class SFDiVeQDetachOptions:
    """SF-DiVeQ's warm-up, initialisation and inference (sf_diveq_detach: no noise)."""
    skip_steps: int = param(200, ge=0, doc="train_vq steps without quantization before the curve starts (reference "
                                           "1000; 200 here: the demo run has 1200 train_vq steps)")
    avg_steps: int = param(50, ge=0, doc="the last warm-up steps whose latents are pooled (reference 50)")
    latents_per_code: int = param(0, ge=0, doc="latents averaged into each code: the most recent K x this many of "
                                               "the pool; 0: all of it, floor(pool / K) each (reference). At batch "
                                               "32 of 8 x 8 tokens and K 512 the pool gives 200 per code, the "
                                               "reference's runs ~20-40")
    inference: Literal["codes", "curve"] = param("codes", doc="eval output: nearest code, or projection on the curve")

    def check(self) -> None:
        if self.avg_steps > self.skip_steps:
            fail(self, "avg_steps", f"must be <= skip_steps ({self.skip_steps})")


@dataclass
class SFDiVeQOptions(SFDiVeQDetachOptions):
    """SF-DiVeQ: the detach variant's options plus the directional noise."""
    noise_var: float = param(1e-3, ge=0, le=1, doc=NOISE_VAR_DOC)


@dataclass
class GumbelOptions:
    """Straight-through Gumbel-softmax with exponential temperature annealing."""
    tau0: float = param(1.0, gt=0, doc="initial temperature")
    tau_min: float = param(0.1, gt=0, doc="temperature floor")
    anneal_rate: float = param(0.0, ge=0, doc="0: tau0 -> tau_min geometrically over the run, reaching tau_min at "
                                              "its last step (the DiVeQ reference: 1 -> 0.1 over all epochs); > 0: "
                                              "tau = max(tau_min, tau0 exp(-anneal_rate step)) (before: 2e-3)")
    kl_weight: float = param(5e-4, ge=0, doc="weight of KL(softmax(logits) || uniform)")

    def check(self) -> None:
        if self.tau_min > self.tau0:
            fail(self, "tau_min", f"must be <= tau0 ({self.tau0})")


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    name: str           # quantizer.method, and the name of its params section
    target: str         # "<module>:<class>", imported on first use
    options: type       # its options dataclass (NoOptions when it has none)
    what: str           # one line for the README's method table
    source: str         # the paper (or papers) it comes from

    def load(self) -> type:
        """The method's Quantizer subclass (imports torch)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_Q = "pipeline.quantizers."

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("nsvq", _Q + "nsvq:NSVQ", NSVQOptions,
           "dense non-stationary embedding loss (every code pulled towards nearby latents, weights "
           "min(1, lambda K softmax(-d/tau)), tau decayed per epoch) + modified STE; the NSVQ schedule adds "
           "replacement while the encoder drifts, then freezes it", "NS-VQ / NSVQ papers"),
    Method("vq", _Q + "vq:VQ", NoOptions,
           "nearest code, straight-through estimator, codebook + beta commitment loss", "VQ-VAE"),
    Method("ema", _Q + "ema:EMAVQ", EMAOptions,
           "codebook as Laplace-smoothed moving averages of counts and sums", "VQ-VAE / VQ-VAE-2"),
    Method("fc", _Q + "fc:FactorizedVQ", FCOptions,
           "factorized low-dimensional, l2-normalized codes", "ViT-VQGAN"),
    Method("simvq", _Q + "simvq:SimVQ", NoOptions,
           "frozen random codebook C times a learned linear map W", "SimVQ"),
    Method("transvq", _Q + "transvq:TransVQ", TransVQOptions,
           "frozen codebook through one pre-LN linear-attention transformer block", "TransVQ"),
    Method("diveq", _Q + "diveq:DiVeQ", DiVeQOptions,
           "z + the error norm times a (noisy) stop-gradient direction", "DiVeQ"),
    Method("diveq_detach", _Q + "diveq:DiVeQDetach", NoOptions,
           "DiVeQ without the directional noise: forward value = the chosen code", "DiVeQ"),
    Method("sf_diveq", _Q + "sf_diveq:SFDiVeQ", SFDiVeQOptions,
           "DiVeQ onto a dithered curve through consecutive codes; warm-up without quantization, "
           "init from averaged latents", "DiVeQ (SF-DiVeQ)"),
    Method("sf_diveq_detach", _Q + "sf_diveq:SFDiVeQDetach", SFDiVeQDetachOptions,
           "SF-DiVeQ without directional noise: forward value = the dithered point", "DiVeQ (SF-DiVeQ)"),
    Method("rotation", _Q + "rotation:RotationVQ", RotationOptions,
           "latent rotated and rescaled onto its code (constant rotation); EMA codebook + commitment, "
           "as the paper's code trains it", "rotation trick"),
    Method("rotation_loss", _Q + "rotation:RotationLossVQ", NoOptions,
           "the same rotation on a table trained by the VQ losses (codebook + commitment); collapses "
           "here, kept for comparison", "rotation trick"),
    Method("gumbel", _Q + "gumbel:GumbelVQ", GumbelOptions,
           "straight-through Gumbel-softmax over learned logits, exponential temperature annealing",
           "Gumbel-softmax / dVAE"),
    Method("noise_sub", _Q + "noise_sub:NoiseSubstitutionVQ", NoOptions,
           "z + the error norm times a random unit direction", "noise substitution VQ"),
)}


def method_of(cls: type) -> Method | None:
    """The registered method whose class is exactly ``cls`` (None for wrappers and bases)."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    return next((m for m in METHODS.values() if m.target == target), None)


def build_quantizer(qp, dim: int):
    """The quantizer ``qp`` (a built QuantizerParams) names, for latents of width ``dim``.

    With ``qp.levels > 1`` the result is a ResidualVQ of ``levels`` independent instances
    of the method (each its own codebook and state); for diveq with ``residual: sum`` the
    reference's structure, one DiVeQ on the sum of hard levels (diveq.SummedResidualDiVeQ)."""
    cls = METHODS[qp.method].load()

    def one():
        return cls(qp.codebook_size, dim, getattr(qp, qp.method), beta=qp.beta, search=qp.search)

    if qp.levels == 1:
        return one()
    if qp.method == "diveq" and qp.diveq.residual == "sum":
        from .diveq import SummedResidualDiVeQ

        return SummedResidualDiVeQ([one() for _ in range(qp.levels)])
    from .residual import ResidualVQ

    return ResidualVQ([one() for _ in range(qp.levels)])


def options_cell(options: type) -> str:
    """The README table's options column: ``quantizer.<name>`` keys with their defaults."""
    fields = dataclasses.fields(options)
    return ", ".join(f"{f.name} ({f.default})" for f in fields) if fields else "–"


def markdown_table() -> str:
    """The README's method table, made from METHODS."""
    rows = ["| method | what it is | source | options (`quantizer.<method>`, default) |",
            "|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.what} | {m.source} | {options_cell(m.options)} |" for m in METHODS.values()]
    return "\n".join(rows)


TABLE_BEGIN = "<!-- methods table: made from pipeline/quantizers/registry.py by " \
              "`python -m pipeline.quantizers.registry --readme`; do not edit by hand -->"
TABLE_END = "<!-- end of methods table -->"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the part between the table markers replaced by markdown_table()."""
    from ..readme_tables import replace_between

    return replace_between(text, TABLE_BEGIN, TABLE_END, markdown_table())


if __name__ == "__main__":
    from ..readme_tables import main

    main("methods", TABLE_BEGIN, TABLE_END, markdown_table)
