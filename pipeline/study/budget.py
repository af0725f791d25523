"""The study's budget: the params every cell shares, checked against params.yaml.

Default (small enough for 26 cells on one machine): train_vq 300 tracking + 100 frozen
steps; and, when params.yaml has them, ``refine_gan.steps=0`` and ``train_prior.steps=0``,
so a cell measures the tokenizer out of train_vq alone (both stages then pass through).
User overrides (``--set key=value``) apply on top. Every key must already exist in
params.yaml: a typo would otherwise reach every cell as a new key and fail all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_BUDGET = {"train_vq.track_steps": "300", "train_vq.freeze_steps": "100"}
# Later stages, switched off only if params.yaml defines them (they are being added).
SKIP_STAGES = {"refine_gan.steps": "0", "train_prior.steps": "0"}


_MISSING = object()


def get_dotted(tree: Any, dotted: str, default: Any = None) -> Any:
    """tree["a"]["b"] for "a.b", or ``default`` where the path does not exist."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def study_budget(params_path: Path, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """DEFAULT_BUDGET + the SKIP_STAGES keys present in params.yaml + ``overrides``, as strings."""
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    budget = dict(DEFAULT_BUDGET)
    budget.update({k: v for k, v in SKIP_STAGES.items() if get_dotted(raw, k, _MISSING) is not _MISSING})
    budget.update({k: str(v) for k, v in (overrides or {}).items()})
    for key in ("quantizer.method", "quantizer.codebook_size"):
        if key in budget:
            raise ValueError(f"{key} is set per cell (--methods / --codebook-sizes), not in the budget")
    unknown = sorted(k for k in budget if get_dotted(raw, k, _MISSING) is _MISSING)
    if unknown:
        raise ValueError(f"{params_path}: no such key(s): {', '.join(unknown)}")
    return budget


def parse_sets(items: list[str]) -> dict[str, str]:
    """["a.b=1", ...] -> {"a.b": "1"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out
