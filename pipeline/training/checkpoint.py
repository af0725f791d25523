"""Checkpoint files of a training run: every stateful object, the RNG states, the loss history
and the unfinished log interval, written atomically and tied to a fingerprint of the run's
params and inputs, so that a rerun resumes only a run it would have repeated exactly.

Beside each checkpoint ``<stage>.pt`` lies ``<stage>.pt.sha256``, the sha256 of its bytes
(computed while writing). A checkpoint is resumed only when its bytes match: one corrupted in
place (same size, flipped bytes), truncated, or left without its digest (a kill between the two
renames) is reported by name on stderr and the run starts over from step 0, because a
checkpoint is a cache of work that can be redone, never an input. Verifying costs one read and
hash of the file (about 1 GB/s) once per stage start, never per step.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import distributed
from ..atomic import atomic_path
from ..digest import file_sha256
from ..errors import UnreadableFileError, note, warn
from ..torchio import atomic_save, safe_load


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (params dicts, input file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def digest_path(path: Path) -> Path:
    """Where the sha256 of checkpoint ``path`` is kept."""
    return path.with_name(path.name + ".sha256")


def rng_states(device: torch.device) -> dict:
    """This process's RNG states: {"cpu": ..., "cuda": ... or None}."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def gather_rng_states(device: torch.device) -> list[dict]:
    """Every rank's RNG states, in rank order (a collective: every rank calls it)."""
    mine = rng_states(device)
    if not distributed.active():
        return [mine]
    import torch.distributed as dist

    out: list = [None] * distributed.size()
    dist.all_gather_object(out, {k: (v.cpu() if v is not None else None) for k, v in mine.items()})
    return out


def save_checkpoint(path: Path, run_fingerprint: str, step: int, history: list, pending: dict,
                    state: Mapping[str, Any], device: torch.device, rng: list[dict] | None = None) -> None:
    """``pending``: metric sums and counts of the unfinished log interval, so the interval that
    straddles an interruption still averages over all its steps. ``rng``: every rank's RNG states
    (:func:`gather_rng_states`); default this process's. Rank r resumes with ``rng[r]``."""
    rng = rng if rng is not None else [rng_states(device)]
    digest = atomic_save({"step": step, "fingerprint": run_fingerprint, "history": history, "rng": rng,
                          "pending": pending, "state": {k: v.state_dict() for k, v in state.items()}}, path)
    with atomic_path(digest_path(path)) as tmp:
        Path(tmp).write_text(digest + "\n")


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


def verify_checkpoint(path: Path) -> str | None:
    """None when ``path``'s bytes match its recorded sha256, else why not."""
    try:
        expected = digest_path(path).read_text().strip()
    except OSError:
        return f"it has no readable digest ({digest_path(path).name})"
    actual = file_sha256(path)
    return None if actual == expected else f"its sha256 {actual[:12]}... is not the recorded {expected[:12]}..."


def load_checkpoint(path: Path | None, run_fingerprint: str, state: Mapping[str, Any], device: torch.device,
                    name: str) -> tuple[int, list, dict]:
    """Restore ``state`` and the RNG states from ``path`` when it holds an intact checkpoint of
    this run; returns (step, history, pending), or (0, [], {}) to start over."""
    if path is None or not path.exists():
        return 0, [], {}
    problem = verify_checkpoint(path)
    if problem is not None:
        warn(f"[{name}] checkpoint {path} is corrupt ({problem}); starting over from step 0")
        return 0, [], {}
    try:
        ckpt = safe_load(path, "checkpoint", map_location=device)
    except UnreadableFileError as e:
        warn(f"[{name}] {e}; starting over from step 0")
        return 0, [], {}
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != run_fingerprint:
        note(f"[{name}] checkpoint {path} is from other params/inputs; starting over")
        return 0, [], {}
    if set(ckpt.get("state", {})) != set(state):   # written by another version of the recipe
        note(f"[{name}] checkpoint {path} holds other state ({sorted(ckpt.get('state', {}))}); starting over")
        return 0, [], {}
    for key, obj in state.items():
        obj.load_state_dict(ckpt["state"][key])
    # Rank r takes the states rank r saved; a run resumed on more ranks than wrote the
    # checkpoint gives the extra ranks rank 0's (they then draw rank 0's stream: the quantizers
    # keep every rank's RNG equal anyway; train_prior's dropout streams are re-split by rank).
    saved = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    mine = saved[distributed.rank()] if distributed.rank() < len(saved) else saved[0]
    torch.set_rng_state(mine["cpu"])
    if device.type == "cuda" and mine.get("cuda") is not None:
        torch.cuda.set_rng_state(mine["cuda"], device)
    note(f"[{name}] resuming from step {ckpt['step']} ({path})")
    return ckpt["step"], ckpt["history"], ckpt["pending"]
