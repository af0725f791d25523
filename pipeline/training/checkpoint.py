"""Checkpoint files of a training run: every stateful object, the RNG states, the loss history
and the unfinished log interval, written atomically and tied to a fingerprint of the run's
params and inputs, so that a rerun resumes only a run it would have repeated exactly."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from ..torchio import atomic_save


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (params dicts, input file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(path: Path, run_fingerprint: str, step: int, history: list, pending: dict,
                    state: Mapping[str, Any], device: torch.device) -> None:
    """``pending``: metric sums and counts of the unfinished log interval, so the interval that
    straddles an interruption still averages over all its steps."""
    rng = {"cpu": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    atomic_save({"step": step, "fingerprint": run_fingerprint, "history": history, "rng": rng,
                 "pending": pending, "state": {k: v.state_dict() for k, v in state.items()}}, path)


def load_checkpoint(path: Path | None, run_fingerprint: str, state: Mapping[str, Any], device: torch.device,
                    name: str) -> tuple[int, list, dict]:
    """Restore ``state`` and the RNG states from ``path`` when it holds a checkpoint of this run;
    returns (step, history, pending), or (0, [], {}) to start over."""
    if path is None or not path.exists():
        return 0, [], {}
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # a checkpoint torn by a crash outside atomic_save: start over
        print(f"[{name}] ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return 0, [], {}
    if ckpt.get("fingerprint") != run_fingerprint:
        print(f"[{name}] checkpoint {path} is from other params/inputs; starting over", file=sys.stderr)
        return 0, [], {}
    if set(ckpt.get("state", {})) != set(state):   # written by another version of the recipe
        print(f"[{name}] checkpoint {path} holds other state ({sorted(ckpt.get('state', {}))}); starting over",
              file=sys.stderr)
        return 0, [], {}
    for key, obj in state.items():
        obj.load_state_dict(ckpt["state"][key])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    print(f"[{name}] resuming from step {ckpt['step']} ({path})", file=sys.stderr)
    return ckpt["step"], ckpt["history"], ckpt["pending"]
