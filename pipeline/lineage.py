"""DVC's content hashes of stage outputs, computed the way DVC computes them, so an MLflow run
can record the exact hash dvc.lock (and DVC's cache, ``.dvc/cache/files/md5/<2>/<30>``) holds
for each file it produced, and a later run can find the run that produced the current outputs.

A file's hash is the md5 of its bytes. A folder's is DVC's tree hash: the md5 of the JSON list
``[{"md5": <file md5>, "relpath": <posix path>}, ...]`` sorted by relpath (``json.dumps(...,
sort_keys=True)``), with ".dir" appended (dvc_data's ``Tree.as_bytes``; the end-to-end test
checks both against dvc.lock). Standard library only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .digest import file_hash


def dvc_md5(path: str | Path) -> str:
    """The hash DVC records for output ``path`` (a file or a folder)."""
    path = Path(path)
    if not path.is_dir():
        return file_hash(path, "md5")
    entries = [{"md5": file_hash(f, "md5"), "relpath": f.relative_to(path).as_posix()}
               for f in path.rglob("*") if f.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def lock_outs(stage: str, lock: str | Path = "dvc.lock") -> dict[str, str]:
    """{path: md5} of ``stage``'s outputs as dvc.lock records them now ({} when not recorded)."""
    import yaml

    try:
        entry = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {}).get(stage) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {o["path"]: o["md5"] for o in entry.get("outs", []) if "md5" in o}
