"""The papers' claims as grids of study cells (DVC experiments; pipeline/study runs them).

Every claim's cells share :data:`CLAIM_BUDGET` (on top of the methods study's budget): the
validation split is 1,024 demo crops (at 128, the spread between seeds swamps the methods'
differences), no prior, and, unless the claim says otherwise, no refinement. A cell's own
params are its method and K plus its claim's arm; ``train_vq.seed`` is the seed (the
quantizer's initial table and noise, the batch order; pretraining and k-means are shared by
the seeds, so the spread is that of train_vq). A cell costs 4-11 minutes on a 2-core CPU
(the lent machines differ by ~1.5x), so batch_size's grid finishes in at most 90 minutes
there; the others may not, and run as parts, one command of at most 90 minutes per part
(the ``full`` note says how to split them; ``python -m pipeline.claims list`` counts each
grid's cells).

Starts (``train_vq.init``): ``kmeans`` (the shared k-means start of every method), ``scratch``
(no pretraining; each method's reference init), as each claim's arm says. "Drift" arms pretrain
50 steps only, so the encoder still moves a lot during train_vq (with the default 600-step
pretrain and k-means, vq, ema and nsvq all keep ~100% of their codes: there is nothing to
track).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

from ..study.cells import Cell

CLAIM_BUDGET = {"data.demo_val_crops": "1024", "refine_gan.steps": "0", "train_prior.steps": "0"}
DRIFT = {"pretrain.steps": "50", "train_vq.init": "kmeans", "quantizer.replacement.policy": "none"}
SCRATCH = {"pretrain.steps": "1", "train_vq.init": "scratch"}       # pretrain's weights are not read
# nsvq_ablation's pieces: each arm adds one, so a piece is written once and shared by its arms
TRACK_ONLY = {"train_vq.track_steps": "400", "train_vq.freeze_steps": "0"}
TRACK_THEN_FREEZE = {"train_vq.track_steps": "300", "train_vq.freeze_steps": "100"}
REPLACE = {"quantizer.replacement.policy": "importance"}
REFINE = {"refine_gan.steps": "300"}


@dataclass(frozen=True)
class Arm:
    """A setting of a claim: its label, the params it sets, and its methods (default: the claim's)."""
    name: str
    sets: dict[str, str] = field(default_factory=dict)
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    name: str                # reports/claims/<name>/ and <name>.md
    title: str
    paper: str               # the paper's statement and number
    methods: tuple[str, ...]
    codebook_sizes: tuple[int, ...]
    arms: tuple[Arm, ...]
    budget: dict[str, str] = field(default_factory=dict)
    dims: tuple[int, ...] = ()         # model.code_dim values (a D column); () keeps params.yaml's
    full: str = ""                     # what the paper's statement needs beyond the default grid

    def cells(self, seeds: list[int], methods=None, codebook_sizes=None, arms=None, dims=None) -> list[Cell]:
        """The grid, K-major (shared stages first): arm x D x K x method x seed."""
        out = []
        for arm, d, k in product([a for a in self.arms if arms is None or a.name in arms], dims or self.dims or (None,),
                                 codebook_sizes or self.codebook_sizes):
            for m, s in product([m for m in arm.methods or self.methods if methods is None or m in methods], seeds):
                out.append(self._cell(arm, d, k, m, s))
        return out

    def _cell(self, arm: Arm, d: int | None, k: int, m: str, s: int) -> Cell:
        sets = {**arm.sets, "train_vq.seed": str(s), **({"model.code_dim": str(d)} if d else {})}
        labels = {"arm": arm.name, **({"D": d} if d else {}), "seed": s}
        tag = f"{self.name}-{arm.name}" + (f"-d{d}" if d else "") + f"-s{s}"
        return Cell(m, k, tuple(sorted(sets.items())), tuple(labels.items()), tag)


CLAIMS: dict[str, Claim] = {c.name: c for c in (
    Claim("ns_vq_tables", "NS-VQ paper, Tables 2-3: usage and rFID as K grows",
          "On CelebA-HQ at K = 64 / 1,024 / 8,192 and code dims 3 and 64, factorized codes (FC) and plain VQ "
          "lose codes as K grows while EMA, SimVQ, NS-VQ and TransVQ keep ~100%; NS-VQ / TransVQ reach the "
          "lowest rFID at the largest K.",
          ("fc", "vq", "ema", "simvq", "nsvq", "transvq"), (64, 1024, 8192),
          (Arm("drift", DRIFT), Arm("reference", {**SCRATCH, "quantizer.replacement.policy": "none"})),
          budget={"train_vq.track_steps": "300", "train_vq.freeze_steps": "100"}, dims=(64,),
          full="one command per arm and K (--arms drift --codebook-sizes 8192: 12 cells, ~75 min here); "
               "the D = 3 half of the tables doubles it (--dims 3)"),
    Claim("batch_size", "NS-VQ paper, Fig. 4: a larger batch lowers plain VQ's rFID",
          "For plain VQ (K = 64, D = 64), a larger batch gives a lower rFID at equal epochs.",
          ("vq",), (64,),
          tuple(Arm(f"epochs-b{b}", {**SCRATCH, "train_vq.batch_size": str(b), "train_vq.track_steps": str(st),
                                     "train_vq.freeze_steps": "0", "quantizer.replacement.policy": "none"})
                for b, st in ((16, 1024), (64, 256), (256, 64)))      # 8 epochs of 2,048 crops each
          + tuple(Arm(f"steps-b{b}", {**SCRATCH, "train_vq.batch_size": str(b), "train_vq.track_steps": "256",
                                      "train_vq.freeze_steps": "0", "quantizer.replacement.policy": "none"})
                  for b in (16, 256)),                                 # equal steps (b64 is the same cell above)
          dims=(64,)),
    Claim("nsvq_ablation", "NSVQ paper: replacement + freezing + refinement over SimVQ at full usage",
          "On ImageNet 128 px with 65,536 codes NSVQ lowers rFID from 2.39 (SimVQ) to 2.10, both at 100% "
          "usage; its pieces are the NS loss, codebook replacement, stage-wise encoder freezing and "
          "adversarial refinement.",
          ("nsvq",), (8192,),
          (Arm("ns_loss", {**DRIFT, **TRACK_ONLY}),
           Arm("with_replacement", {**DRIFT, **REPLACE, **TRACK_ONLY}),
           Arm("with_freezing", {**DRIFT, **REPLACE, **TRACK_THEN_FREEZE}),
           Arm("with_refinement", {**DRIFT, **REPLACE, **TRACK_THEN_FREEZE, **REFINE}),
           # SimVQ: the same start and schedule as with_freezing (it needs no replacement: W moves every code)
           Arm("simvq", {**DRIFT, **TRACK_THEN_FREEZE}, ("simvq",)),
           # The control for with_refinement: SimVQ's tokenizer (train_vq restored from the simvq
           # arm's run-cache) with the same adversarial refinement.
           Arm("simvq_refined", {**DRIFT, **TRACK_THEN_FREEZE, **REFINE}, ("simvq",))),
          full="on a slow machine the NSVQ arms and the SimVQ arms (--arms simvq simvq_refined) as two "
               "commands; K = 65,536 on ImageNet 128 px needs GPUs (the nsvq_imagenet128_k65536 preset)"),
    Claim("diveq_low_bitrate", "DiVeQ paper: SF-DiVeQ's usage without replacement; DiVeQ at low bitrates",
          "SF-DiVeQ reaches full codebook usage without replacement; DiVeQ and SF-DiVeQ reconstruct better "
          "than STE, the rotation trick and Gumbel-softmax at low bitrates (K = 256, 512, 1,024).",
          ("diveq", "sf_diveq", "vq", "rotation", "gumbel"), (256, 512, 1024),
          # The reference code's protocol: its VQ / DiVeQ modules replace unused codes (every 100
          # iterations, vqvae_compression/vq.py); here params.yaml's importance replacement does.
          # SF-DiVeQ and Gumbel are not replaceable (replacement.py skips them): SF-DiVeQ trains
          # without replacement, as the claim says.
          (Arm("reference", {**SCRATCH}),),
          budget={"train_vq.track_steps": "300", "train_vq.freeze_steps": "100"},
          full="K = 256 / 512 / 1,024 are one command each (--codebook-sizes 256, ...), 10 cells and ~45 min each"),
)}
