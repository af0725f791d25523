"""The params.yaml schema: one dataclass per section, validated before any stage runs.

``load_params("params.yaml")`` returns a :class:`Params`; a bad key or value raises
:class:`ConfigError` naming the dotted key (``train_vq.lr: -0.1 is out of range ...``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Literal

from .configbase import ConfigError, build, fail, flatten, param, to_dict
from .models.registry import ARCHS
from .quantizers.registry import METHODS

__all__ = ["ConfigError", "Params", "load_params", "to_dict", "flatten"]


@dataclass
class DataParams:
    source: str = param("demo", doc="'demo' for the bundled photographs, or a folder of images")
    image_size: int = param(32, ge=8, le=4096)
    demo_train_crops: int = param(2048, ge=1)
    demo_val_crops: int = param(128, ge=1)
    demo_min_scale: float = param(0.15, gt=0, le=1, doc="crop side as a fraction of the photo's short side")
    demo_max_scale: float = param(0.6, gt=0, le=1)
    val_fraction: float = param(0.1, gt=0, lt=1, doc="share of a flat user folder held out for validation")
    layout: Literal["auto", "flat", "train_val"] = param(
        "auto", doc="flat: hash split; train_val: the folder's train/ and val/ as given; auto: train_val when both exist")
    train_store_size: int = param(0, ge=0, le=8192, doc="side training images are stored at, for random crops; "
                                                        "0: image_size (no crop room)")
    shard_size: int = param(2048, ge=1, doc="images per prepared shard file")
    augment: Literal["none", "crop", "crop_flip"] = param(
        "none", doc="training batches: random image_size crop of the stored image, and horizontal flip")
    workers: int = param(0, ge=0, doc="processes that decode (prepare) and load batches (training); 0: the cores")
    seed: int = param(0, ge=0)

    def check(self) -> None:
        if self.demo_min_scale > self.demo_max_scale:
            fail(self, "demo_min_scale", f"must be <= data.demo_max_scale ({self.demo_max_scale})")
        if self.train_store_size and self.train_store_size < self.image_size:
            fail(self, "train_store_size", f"must be 0 or >= data.image_size ({self.image_size})")


def _model_params() -> type:
    """The ``model`` section: the architecture, the code dimension, then one section per
    registered architecture (``model.<arch>``: its options dataclass, pipeline/models/registry.py)."""
    shared = [
        ("arch", Literal[tuple(ARCHS)], param("ns_vqvae", doc="an architecture of pipeline/models/registry.py")),
        ("code_dim", int, param(64, ge=1, doc="dimension D of the latents and codes")),
    ]
    sections = [(a.name, a.options, field(default_factory=a.options)) for a in ARCHS.values()]
    return make_dataclass("ModelParams", shared + sections, namespace={"__module__": __name__})


ModelParams = _model_params()


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
class SearchKernelParams:
    """Launch config of the nearest-code search kernel (CUDA; ``default_config`` in
    pipeline/kernels/search_triton.py). null: the kernel's default for the shape. Results can
    move at rounding level with these (summation order, split-K), so they are params."""
    BLOCK_N: int | None = param(None, ge=1, doc="latent rows per program")
    BLOCK_K: int | None = param(None, ge=16, doc="codes per packed tile")
    num_warps: int | None = param(None, ge=1)
    num_stages: int | None = param(None, ge=1)
    SPLIT_K: int | None = param(None, ge=0, doc="code-tile ranges per row block; 0: auto")
    path: Literal["fma", "dot"] | None = param(None, doc="fma (code_dim <= 16 only) or tl.dot")


@dataclass
class NSKernelParams:
    """Launch config of NSVQ's search + NS-loss kernels (CUDA; ``default_ns_config`` in
    pipeline/kernels/ns_loss_triton.py): F_* the fused row pass, C_* the per-code pass.
    null: the kernel's default for the shape."""
    F_BLOCK_N: int | None = param(None, ge=1, doc="rows per program of the fused row pass")
    F_BLOCK_K: int | None = param(None, ge=16, doc="codes per packed tile (both passes read the packed codebook)")
    F_BLOCK_D: int | None = param(None, ge=0, doc="tl.dot path: D chunk (16, 32 or 64); 0: auto")
    F_num_warps: int | None = param(None, ge=1)
    F_num_stages: int | None = param(None, ge=1)
    C_BLOCK_K: int | None = param(None, ge=1, doc="codes per program of the per-code pass")
    C_BLOCK_R: int | None = param(None, ge=1, doc="rows per step of the per-code pass")
    C_SPLIT: int | None = param(None, ge=0, doc="row ranges per code block; 0: auto")
    C_num_warps: int | None = param(None, ge=1)
    C_num_stages: int | None = param(None, ge=1)


@dataclass
class SearchParams:
    """The nearest-code search of every method and of k-means (NSVQ runs it inside its NS loss)."""
    backend: Literal["auto", "torch", "triton"] = param(
        "auto", doc="auto: the Triton kernels on CUDA, the chunked torch path elsewhere")
    chunk: int = param(8192, ge=1, doc="rows per chunk of the torch path")
    precision: Literal["fp32", "tf32x3"] = param(
        "fp32", doc="matmuls of the GPU kernels at code_dim > 16: fp32 on the CUDA cores, or tf32x3 "
                    "(split TF32 on the tensor cores, ~2^-21 relative per product); the torch path is fp32")
    kernel: SearchKernelParams = field(default_factory=SearchKernelParams)
    ns_kernel: NSKernelParams = field(default_factory=NSKernelParams)


def _quantizer_params() -> type:
    """The ``quantizer`` section: what every method shares, then one section per registered
    method (``quantizer.<method>``: that method's options dataclass, pipeline/quantizers/registry.py)."""
    shared = [
        ("method", Literal[tuple(METHODS)], param("nsvq", doc="a method of pipeline/quantizers/registry.py")),
        ("codebook_size", int, param(512, ge=2)),
        ("beta", float, param(0.25, ge=0, doc="commitment weight")),
        ("levels", int, param(1, ge=1, doc="residual VQ levels; > 1 stacks that many quantizers of the method")),
        ("search", SearchParams, field(default_factory=SearchParams)),
        ("replacement", ReplacementParams, field(default_factory=ReplacementParams)),
    ]
    sections = [(m.name, m.options, field(default_factory=m.options)) for m in METHODS.values()]
    return make_dataclass("QuantizerParams", shared + sections, namespace={"__module__": __name__})


QuantizerParams = _quantizer_params()


def method_params(qp) -> dict:
    """The part of a built quantizer section its method reads, as a dict: the shared keys and the
    method's own section (the other methods' sections change nothing; dvc.yaml narrows
    train_vq's params the same way)."""
    return {k: v for k, v in to_dict(qp).items() if k not in METHODS or k == qp.method}


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
class AdversarialParams:
    """The VQGAN loss terms (Esser et al. 2021, "Taming Transformers", sec. 3.1;
    taming-transformers' ``VQLPIPSWithDiscriminator``), shared by train_vq and refine_gan:

        nll    = rec(x_hat, x) + perceptual_weight * LPIPS(x_hat, x)
        L_G    = nll + lambda * L_GAN(D(x_hat))      (from step disc_start)
        lambda = disc_weight * ||grad_W nll|| / (||grad_W L_GAN|| + 1e-4)   (adaptive_weight; W the
                 decoder's last layer; VQGAN eq. 7), or disc_weight itself (SimVQ's gen_loss_weight)
        L_D    = the discriminator loss on D(x) and D(sg(x_hat))

    The defaults here switch every extra term off (train_vq's MSE run); refine_gan sets its own.
    """
    rec_loss: Literal["mse", "l1"] = param("mse", doc="pixel reconstruction loss (VQGAN: l1)")
    perceptual_weight: float = param(0.0, ge=0, doc="weight of the LPIPS term (offline weights); 0: none")
    perceptual_net: Literal["alex", "vgg"] = param("alex", doc="LPIPS backbone of the perceptual loss (VQGAN: vgg)")
    disc_weight: float = param(0.0, ge=0, doc="scale of the GAN term's weight (VQGAN: 0.8); 0: no GAN term")
    adaptive_weight: bool = param(True, doc="lambda adapts as VQGAN eq. 7; false: lambda = disc_weight")
    disc_start: int = param(0, ge=0, doc="step at which the generator's GAN term switches on")
    gan_loss: Literal["hinge", "non_saturating"] = param("hinge", doc="GAN objective of both players")
    disc_layers: int = param(3, ge=1, le=6, doc="strided conv layers of the patch discriminator (VQGAN: 3)")
    disc_channels: int = param(64, ge=1, doc="width of the discriminator's first layer (doubles per layer, max 8x)")
    disc_lr: float = param(0.0, ge=0, doc="discriminator learning rate; 0: same as lr")

    @property
    def adversarial(self) -> bool:
        return self.disc_weight > 0


@dataclass
class TrainVQParams(LoopParams, AdversarialParams):
    """train_vq: the two NSVQ phases. Loss: rec (+ LPIPS, + GAN from disc_start: AdversarialParams,
    all off by default) + the quantizer's loss. Unlike refine_gan's, this discriminator idles
    until ``disc_start``, as in taming-transformers (its ``disc_factor`` is 0 before it)."""
    track_steps: int = param(800, ge=0, doc="phase 1: encoder, decoder and codebook train (drift tracking)")
    freeze_steps: int = param(400, ge=0, doc="phase 2: encoder frozen, codebook and decoder settle")
    steps_per_epoch: int = param(0, ge=0, doc="steps per tau epoch; 0: one pass over the training set")
    init: Literal["kmeans", "random", "scratch"] = param(
        "kmeans", doc="kmeans: the pretrained autoencoder, every method's codebook from kmeans_init's codes "
                      "(one shared start); random: the pretrained autoencoder, each method's reference codebook "
                      "init; scratch: no pretraining (a fresh autoencoder, seeded by seed) and the reference init")
    betas: list[float] = param(default_factory=lambda: [0.9, 0.999],
                               doc="Adam betas of the autoencoder (torch's default; VQGAN and SimVQ: 0.5, 0.9)")
    ema_decay: float = param(0.0, ge=0, lt=1, doc="EMA of the autoencoder's weights, written as the model "
                                                  "file (SimVQ: 0.999); 0: off")

    def check(self) -> None:
        if self.track_steps + self.freeze_steps < 1:
            fail(self, "track_steps", "plus train_vq.freeze_steps must be at least 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail(self, "betas", "must be two numbers in [0, 1)")


@dataclass
class RefineGANParams(LoopParams, AdversarialParams):
    """refine_gan: adversarial refinement of the tokenizer (VQGAN's loss, Esser et al. 2021;
    the terms: :class:`AdversarialParams`). The discriminator trains from step 0; the
    generator's GAN term switches on at ``disc_start``. ``steps: 0`` passes models/vq.pt through
    unchanged.
    """
    steps: int = param(300, ge=0, doc="refinement steps; 0 skips the stage (tokenizer = train_vq's model)")
    lr: float = param(1e-4, gt=0, doc="generator (decoder, and encoder/codebook if trained) learning rate")
    disc_start: int = param(100, ge=0, doc="discriminator warm-up: steps before the generator's GAN term switches on")
    disc_weight: float = param(0.1, ge=0, doc="scale of the adaptive GAN weight (VQGAN: 0.8)")
    perceptual_weight: float = param(1.0, ge=0, doc="weight of the LPIPS term")
    rec_loss: Literal["l1", "mse"] = param("l1", doc="pixel reconstruction loss (VQGAN: l1)")
    train: Literal["decoder", "decoder_encoder_codebook"] = param(
        "decoder", doc="what the generator updates; 'decoder' keeps encoder and codebook (so the tokens) fixed")
    disc_layers: int = param(2, ge=1, le=6, doc="strided conv layers of the patch discriminator")
    grid_images: int = param(8, ge=1, le=64, doc="validation images in the before/after grid")


@dataclass
class PriorParams(LoopParams):
    """train_prior: a GPT-style autoregressive transformer over raster-ordered token grids.

    Sequence: the grid's positions in raster order, the ``quantizer.levels`` codes of a
    position consecutive, after a start token. lr: linear warm-up, then cosine decay to
    ``lr * min_lr_ratio``. ``steps: 0`` trains no prior (evaluate reports gfid as null).
    """
    steps: int = param(800, ge=0, doc="training steps; 0: no prior (tokens are still cached)")
    batch_size: int = param(32, ge=1)
    lr: float = param(1e-3, gt=0, doc="peak learning rate")
    weight_decay: float = param(0.01, ge=0)
    grad_clip: float = param(1.0, ge=0, doc="max grad norm; 0 disables clipping")
    layers: int = param(4, ge=1)
    heads: int = param(4, ge=1)
    width: int = param(128, ge=1, doc="model width; divisible by heads")
    mlp_ratio: float = param(4.0, gt=0)
    dropout: float = param(0.1, ge=0, lt=1)
    warmup_steps: int = param(50, ge=0, doc="linear lr warm-up steps")
    min_lr_ratio: float = param(0.1, ge=0, le=1, doc="the cosine decays the lr to lr * min_lr_ratio")
    num_samples: int = param(128, ge=0, doc="token grids sampled and decoded to images (for gFID); 0 or >= 2")
    temperature: float = param(1.0, gt=0, doc="sampling temperature")
    top_k: int = param(0, ge=0, doc="sample from the k most likely codes; 0: from all")

    def check(self) -> None:
        if self.width % self.heads:
            fail(self, "width", f"must be divisible by heads ({self.heads})")
        if self.num_samples == 1:
            fail(self, "num_samples", "must be 0 or at least 2 (FID needs two samples)")
        if self.steps and self.warmup_steps > self.steps:
            fail(self, "warmup_steps", f"must be <= steps ({self.steps})")


@dataclass
class EvaluateParams:
    batch_size: int = param(64, ge=1)
    max_images: int = param(0, ge=0, doc="cap on validation images (0: all)")
    train_usage_images: int = param(0, ge=0, doc="training images whose tokens count for train_codebook_usage "
                                                 "(the first N; 0: the whole training split)")
    grid_images: int = param(16, ge=1, le=256)
    lpips_net: Literal["alex", "vgg"] = "alex"
    gfid_samples: int = param(0, ge=0, doc="prior samples in the generation FID; 0: all of train_prior.num_samples")

    def check(self) -> None:
        if self.gfid_samples == 1:
            fail(self, "gfid_samples", "must be 0 (all) or at least 2 (FID needs two samples)")


@dataclass
class DistributedParams:
    """How many processes ``dvc repro`` starts for each training stage on this machine."""
    processes: int = param(1, ge=1, le=1024, doc="processes per machine (torchrun --nproc-per-node), one GPU each "
                                              "on CUDA; 1: one plain process. A param, not an env var: "
                                              "results depend on it at rounding level, so DVC reruns on a change")


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    quantizer: QuantizerParams = field(default_factory=QuantizerParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    kmeans_init: KMeansParams = field(default_factory=KMeansParams)
    train_vq: TrainVQParams = field(default_factory=TrainVQParams)
    refine_gan: RefineGANParams = field(default_factory=RefineGANParams)
    train_prior: PriorParams = field(default_factory=PriorParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    distributed: DistributedParams = field(default_factory=DistributedParams)

    def check(self) -> None:
        arch = getattr(self.model, self.model.arch)
        if self.data.image_size % arch.factor:
            raise ConfigError(
                f"data.image_size: {self.data.image_size} is not divisible by the downsampling factor "
                f"{arch.factor} of model.{self.model.arch}")
        if hasattr(arch, "check_image_size"):
            arch.check_image_size(self.data.image_size, f"model.{self.model.arch}")
        # The patch discriminator halves the image disc_layers times, then two 4x4 convs
        # (stride 1, padding 1) take one pixel each: at least one logit must remain.
        for section in (self.refine_gan, self.train_vq):
            if (section is self.refine_gan or section.adversarial) and self.data.image_size >> section.disc_layers < 3:
                fail(section, "disc_layers", f"is too deep for data.image_size {self.data.image_size} "
                                             f"(needs image_size / 2**disc_layers >= 3)")
        if self.train_prior.top_k > self.quantizer.codebook_size:
            fail(self.train_prior, "top_k", f"must be <= quantizer.codebook_size ({self.quantizer.codebook_size})")
        if self.train_prior.steps and self.evaluate.gfid_samples > self.train_prior.num_samples:
            fail(self.evaluate, "gfid_samples", f"must be <= train_prior.num_samples ({self.train_prior.num_samples})")


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
