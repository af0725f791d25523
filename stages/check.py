"""DVC stage `check`: runs first on every ``dvc repro`` (``always_changed``), before DVC deletes
any stage's outputs.

1. Validates the whole of params.yaml, every section, whether or not a stage that reads it
   would run: a typo'd section or key (``trian_vq:``) fails the repro with the key named, and
   every output is still there.
2. Checks ``data.source`` (pipeline/data/folders.py ``check_source``): 'demo' or a readable folder
   outside the repository's sources and outputs.
3. Writes the source's fingerprint (its listing's sha256: paths, sizes, mtimes) to
   ``paths.source_fingerprint``, a dependency of ``prepare``: adding, removing or rewriting a
   file in the source folder makes ``prepare`` and everything after it stale. The file is
   rewritten only when it changes, so an unchanged source leaves the pipeline up to date.

Imports neither torch, Prefect nor MLflow: it costs a Python start, a YAML read and one
``scandir`` pass over the source: 0.17 s to start, plus 1.3-1.4 s per 100,000 files with the
file-system cache warm (measured on this 2-core machine, 100 folders x 1,000 files).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.data import check_source, source_fingerprint
from pipeline.errors import UserError
from stages.common import dvc_yaml, exit_on_user_error, load_params, stage_paths, stage_products, write_atomic


def main() -> None:
    try:
        p = load_params()
        spec = dvc_yaml()
        paths = stage_paths(spec)
        outputs = [out for stage in spec["stages"] for out in stage_products(stage, spec)] + ["checkpoints"]
        check_source(p.data.source, Path.cwd(), outputs)
        text = json.dumps(source_fingerprint(p.data.source), indent=2, sort_keys=True) + "\n"
    except UserError as e:
        exit_on_user_error(e)
    target = Path(paths.source_fingerprint)
    if not target.exists() or target.read_text() != text:
        write_atomic(target, text)


if __name__ == "__main__":
    main()
