"""The params.yaml schema: one dataclass per section, validated before any stage runs.

``load_params("params.yaml")`` returns a :class:`Params`; a bad key or value raises
:class:`ConfigError` naming the dotted key (``train_vq.lr: -0.1 is out of range ...``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .configbase import ConfigError, build, fail, flatten, param, to_dict

__all__ = ["ConfigError", "Params", "load_params", "to_dict", "flatten", "QUANTIZER_METHODS"]

# Every method registered in pipeline.quantizers; the registry test keeps the two in step.
QUANTIZER_METHODS = ("vq", "ema", "fc", "simvq", "transvq", "nsvq", "diveq", "diveq_detach", "sf_diveq",
                     "sf_diveq_detach", "rotation", "gumbel", "noise_sub")


@dataclass
class DataParams:
    source: str = param("demo", doc="'demo' for the bundled photographs, or a folder of images")
    image_size: int = param(32, ge=8, le=4096)
    demo_train_crops: int = param(2048, ge=1)
    demo_val_crops: int = param(128, ge=1)
    demo_min_scale: float = param(0.15, gt=0, le=1, doc="crop side as a fraction of the photo's short side")
    demo_max_scale: float = param(0.6, gt=0, le=1)
    val_fraction: float = param(0.1, gt=0, lt=1, doc="share of a user folder held out for validation")
    seed: int = param(0, ge=0)

    def check(self) -> None:
        if self.demo_min_scale > self.demo_max_scale:
            fail(self, "demo_min_scale", f"must be <= data.demo_max_scale ({self.demo_max_scale})")


@dataclass
class ModelParams:
    """The convolutional VQ-VAE of the NS-VQ paper (strided convs, residual stack, 1x1 to D)."""
    hidden_channels: int = param(128, ge=1)
    res_channels: int = param(32, ge=1)
    num_res_blocks: int = param(2, ge=0)
    downsample: int = param(4, ge=2, doc="spatial downsampling factor, a power of two")
    code_dim: int = param(64, ge=1)

    def check(self) -> None:
        if self.downsample & (self.downsample - 1):
            fail(self, "downsample", "must be a power of two")


@dataclass
class ReplacementParams:
    """Dead-code replacement (NSVQ / DiVeQ papers): re-seed codes used less than threshold."""
    policy: Literal["none", "random", "importance"] = "importance"
    period: int = param(100, ge=1, doc="steps between replacement rounds")
    threshold: float = param(1.0, ge=0, doc="a code used fewer times than this in a round is dead")
    perturb: float = param(0.01, ge=0, doc="relative noise added to re-seeded codes (importance)")
    until_step: int = param(-1, ge=-1, doc="stop replacing after this train_vq step; -1: while the encoder trains")
    dense_period: int = param(20, ge=1, doc="steps between rounds during the dense early phase (DiVeQ schedule)")
    dense_until: int = param(400, ge=0, doc="the dense phase lasts up to this step; 0: no dense phase")


@dataclass
class NSVQParams:
    """Dense non-stationary embedding loss + modified STE (NS-VQ paper, eqs. in DESIGN.md)."""
    lam: float = param(0.01, ge=0, doc="lambda: weight scale of non-selected codes, w = min(1, lambda K softmax)")
    tau0: float = param(1.0, gt=0, doc="initial softmax temperature")
    tau_decay: float = param(0.9, gt=0, le=1, doc="tau = tau0 * tau_decay ** epoch")
    alpha: float = param(1.0, ge=0, doc="modified STE: a = 2 alpha / numel(z)")


@dataclass
class EMAParams:
    """Codebook as Laplace-smoothed moving averages of counts and sums (VQ-VAE appendix)."""
    decay: float = param(0.99, gt=0, lt=1, doc="EMA decay of counts and sums")
    eps: float = param(1e-5, gt=0, doc="Laplace smoothing of the counts")


@dataclass
class FCParams:
    """Factorized, l2-normalized codes (ViT-VQGAN)."""
    code_dim: int = param(8, ge=1, doc="dimension of the code space the lookup runs in")


@dataclass
class TransVQParams:
    """Frozen codebook through one pre-LN linear-attention block (TransVQ)."""
    model_dim: int = param(256, ge=1, doc="width of the codebook transformer")
    mlp_ratio: float = param(2.0, gt=0, doc="MLP hidden width / model_dim")
    learned_pos: bool = param(True, doc="add a learned per-code position embedding (reference code)")


@dataclass
class DiVeQParams:
    """DiVeQ directional noise (diveq only; diveq_detach has none)."""
    sigma: float = param(1e-3, ge=0, le=1, doc="std of the directional noise v ~ N(0, sigma^2 I)")


@dataclass
class SFDiVeQParams:
    """SF-DiVeQ warm-up, init and inference (shared by sf_diveq and sf_diveq_detach)."""
    sigma: float = param(1e-3, ge=0, le=1, doc="std of the directional noise (sf_diveq only)")
    skip_steps: int = param(200, ge=0, doc="train_vq steps without quantization before the curve starts")
    avg_steps: int = param(50, ge=0, doc="the last steps of the warm-up whose latents initialise the codes")
    inference: Literal["codes", "curve"] = param("codes", doc="eval output: nearest code, or projection on the curve")

    def check(self) -> None:
        if self.avg_steps > self.skip_steps:
            fail(self, "avg_steps", f"must be <= skip_steps ({self.skip_steps})")


@dataclass
class GumbelParams:
    """Straight-through Gumbel-softmax with exponential temperature annealing."""
    tau0: float = param(1.0, gt=0, doc="initial temperature")
    tau_min: float = param(0.1, gt=0, doc="temperature floor")
    anneal_rate: float = param(2e-3, ge=0, doc="tau = max(tau_min, tau0 * exp(-anneal_rate * step))")
    kl_weight: float = param(5e-4, ge=0, doc="weight of KL(softmax(logits) || uniform)")

    def check(self) -> None:
        if self.tau_min > self.tau0:
            fail(self, "tau_min", f"must be <= tau0 ({self.tau0})")


@dataclass
class QuantizerParams:
    method: str = "nsvq"
    codebook_size: int = param(512, ge=2)
    beta: float = param(0.25, ge=0, doc="commitment weight")
    search_chunk: int = param(8192, ge=1, doc="rows per chunk of the nearest-code search")
    levels: int = param(1, ge=1, doc="residual VQ levels; > 1 stacks that many quantizers of the method")
    replacement: ReplacementParams = field(default_factory=ReplacementParams)
    nsvq: NSVQParams = field(default_factory=NSVQParams)
    ema: EMAParams = field(default_factory=EMAParams)
    fc: FCParams = field(default_factory=FCParams)
    transvq: TransVQParams = field(default_factory=TransVQParams)
    diveq: DiVeQParams = field(default_factory=DiVeQParams)
    sf_diveq: SFDiVeQParams = field(default_factory=SFDiVeQParams)
    gumbel: GumbelParams = field(default_factory=GumbelParams)

    def check(self) -> None:
        if self.method not in QUANTIZER_METHODS:
            fail(self, "method", f"is not one of {', '.join(QUANTIZER_METHODS)}")


@dataclass
class LoopParams:
    """Options every training stage shares (pipeline/training.py)."""
    batch_size: int = param(32, ge=1)
    lr: float = param(2e-4, gt=0)
    weight_decay: float = param(0.0, ge=0)
    grad_clip: float = param(0.0, ge=0, doc="max grad norm; 0 disables clipping")
    checkpoint_every: int = param(200, ge=1)
    log_every: int = param(10, ge=1)
    seed: int = param(0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = param(False, doc="torch.compile the encoder and decoder (pays off on a GPU)")


@dataclass
class PretrainParams(LoopParams):
    steps: int = param(600, ge=1)


@dataclass
class KMeansParams:
    iters: int = param(20, ge=0, doc="Lloyd iterations after k-means++ seeding")
    max_latents: int = param(200_000, ge=1, doc="latents sampled from the training set for the fit")
    seed: int = param(0, ge=0)


@dataclass
class TrainVQParams(LoopParams):
    track_steps: int = param(800, ge=0, doc="phase 1: encoder, decoder and codebook train (drift tracking)")
    freeze_steps: int = param(400, ge=0, doc="phase 2: encoder frozen, codebook and decoder settle")
    steps_per_epoch: int = param(0, ge=0, doc="steps per tau epoch; 0: one pass over the training set")
    kmeans_init: bool = param(True, doc="start from the k-means codebook of kmeans_init")

    def check(self) -> None:
        if self.track_steps + self.freeze_steps < 1:
            fail(self, "track_steps", "plus train_vq.freeze_steps must be at least 1")


@dataclass
class EvaluateParams:
    batch_size: int = param(64, ge=1)
    max_images: int = param(0, ge=0, doc="cap on validation images (0: all)")
    grid_images: int = param(16, ge=1, le=256)
    lpips_net: Literal["alex", "vgg"] = "alex"


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    quantizer: QuantizerParams = field(default_factory=QuantizerParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    kmeans_init: KMeansParams = field(default_factory=KMeansParams)
    train_vq: TrainVQParams = field(default_factory=TrainVQParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def check(self) -> None:
        if self.data.image_size % self.model.downsample:
            raise ConfigError(
                f"data.image_size: {self.data.image_size} is not divisible by "
                f"model.downsample ({self.model.downsample})")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; ConfigError names the file, the key and the value."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return build(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
