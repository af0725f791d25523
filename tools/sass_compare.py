"""Does a change alter the kernels' machine code? Compare the sm_90 SASS of every Triton kernel
in this working tree with a commit's, on a machine without a GPU.

    python tools/sass_compare.py                      # working tree vs HEAD (a refactor's check)
    python tools/sass_compare.py 3916c5c              # vs the commit the GPU figures were measured at
    python tools/sass_compare.py 3916c5c --triton-path <folder>   # under another Triton (the GPU image's)
    ... --json reports/bench/sass_vs_3916c5c.json

Each kernel of tools/sm90.py's kernel_cases(), as the working tree launches it at its
default configs, is compiled in both trees (the commit's as a temporary git worktree), disassembled
without addresses and encodings, and compared; the longest loop's length per iteration (the hot
loop's issue count) is shown for both. A kernel whose SASS is identical runs exactly
as it did, so its measured GPU times still hold; "registers renamed" (the same instructions
in the same order with other register numbers) does the same work. Host-side code around the
kernels is not covered. A kernel the commit lacks, or that takes other arguments there, is
reported as not comparable. Beside the verdicts it prints (and writes) the working tree's
registers, stack and shared memory per kernel.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SM90 = REPO / "tools" / "sm90.py"


def _load_sm90():
    """This tree's sm90.py by path, so the dump of an older tree (which may lack it) can use it."""
    spec = importlib.util.spec_from_file_location("nsvq_sm90_tool", SM90)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def specs() -> list[dict]:
    """kernel_cases() of this tree as plain data: the kernel named by module and function."""
    sys.path.insert(0, str(REPO))
    from tools.sm90 import kernel_cases

    return [dict(label=c.label, module=c.fn.fn.__module__, name=c.fn.fn.__name__, signature=c.signature,
                 constexprs=c.constexprs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in kernel_cases()]


def _sha1(lines: list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def verdict(here: dict, there: dict) -> str:
    """identical; "registers renamed" (same instructions in the same order, other register
    numbers: same work, same issue count); differs; or not comparable."""
    if "error" in here or "error" in there:
        return "not comparable"
    if here["sha1"] == there["sha1"]:
        return "identical"
    return "registers renamed" if here["sha1_no_regs"] == there["sha1_no_regs"] else "differs"


def dump(root: str) -> dict:
    """{label: {"instructions", "sha1"} or {"error"}} for the specs on stdin, compiled from ``root``."""
    sys.path.insert(0, root)
    sm90 = _load_sm90()
    out = {}
    for s in json.load(sys.stdin):
        try:
            fn = getattr(importlib.import_module(s["module"]), s["name"])
            cubin = sm90.compile_sm90(fn, s["signature"], s["constexprs"], s["num_warps"], s["num_stages"])
            sass = sm90.sass_instructions(cubin)
            renamed = [re.sub(r"\b(U?R|U?P)\d+\b", r"\1", ins) for ins in sass]    # register numbers out
            loops = sm90.loop_bodies(cubin) if hasattr(sm90, "loop_bodies") else []
            out[s["label"]] = {"instructions": len(sass), "sha1": _sha1(sass), "sha1_no_regs": _sha1(renamed),
                               "loop": max((len(b) for b in loops), default=0), **sm90.resource_usage(cubin)}
        except Exception as e:      # absent at that commit, or other arguments: not comparable
            out[s["label"]] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    import triton

    return {"triton": triton.__version__, "kernels": out}


def run_dump(root: Path, spec: list[dict], triton_path: str | None) -> dict:
    env = dict(os.environ)      # main() has unset sm90.CONFIG_ENV_VARS
    env["PYTHONPATH"] = os.pathsep.join([p for p in (triton_path, str(root)) if p])
    proc = subprocess.run([sys.executable, __file__, "--dump", str(root)], input=json.dumps(spec), env=env,
                          cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"compiling in {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", nargs="?", default="HEAD")
    ap.add_argument("--triton-path", help="a folder put first on PYTHONPATH for both compiles (another Triton)")
    ap.add_argument("--json", help="also write the comparison here")
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.dump:
        print(json.dumps(dump(a.dump)))
        return
    for var in _load_sm90().CONFIG_ENV_VARS:      # the GPU's default configs, here and in the dumps
        os.environ.pop(var, None)
    triton_path = str(Path(a.triton_path).resolve()) if a.triton_path else None
    commit = subprocess.run(["git", "rev-parse", a.rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    spec = specs()
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), commit], cwd=REPO, check=True)
        try:
            here, there = run_dump(REPO, spec, triton_path), run_dump(wt, spec, triton_path)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=REPO, check=True)
    rows = []
    for s in spec:
        h, t = here["kernels"][s["label"]], there["kernels"][s["label"]]
        rows.append(dict(kernel=s["label"], instructions=h.get("instructions"), instructions_at_rev=t.get("instructions"),
                         loop=h.get("loop"), loop_at_rev=t.get("loop"),
                         sass=verdict(h, t), note=t.get("error") or h.get("error") or "",
                         **{key: h.get(key) for key in ("regs", "stack", "shared")}))     # the working tree's
    print(f"working tree vs {a.rev} ({commit[:10]}), Triton {here['triton']}, sm_90, default launch configs")
    print(f"{'kernel':42s} {'regs':>4s} {'stack':>5s} {'shared':>6s} {'instr':>6s} {'at rev':>6s} "
          f"{'loop':>5s} {'at rev':>6s}  SASS")
    for r in rows:
        print(f"{r['kernel']:42s} {r['regs'] or '-':>4} {r['stack'] if r['stack'] is not None else '-':>5} "
              f"{r['shared'] if r['shared'] is not None else '-':>6} "
              f"{r['instructions'] or '-':>6} {r['instructions_at_rev'] or '-':>6} "
              f"{r['loop'] or '-':>5} {r['loop_at_rev'] or '-':>6}  {r['sass']}"
              + (f"  ({r['note']})" if r["note"] else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(rev=a.rev, commit=commit, triton=here["triton"], target="sm_90",
                                                command="python " + " ".join(["tools/sass_compare.py"] + sys.argv[1:]),
                                                kernels=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
