"""Compile every launch config the GPU sweep times (`bash bench/run_all.sh sweep`) for the H100
(sm_90) on this machine, without a GPU: registers, stack (spills), shared memory and compile
time of each kernel a config launches at the bench's size (N = 16,384, K = 65,536). A config
that cannot launch on an H100 (more shared memory than a block may have) or that spills heavily
shows up here, before it costs device time.

    python tools/sweep_resources.py [--d 8|64] [--kernels search|ns]
                                    [--json reports/bench/sweep_resources_triton3.8.json]
    PYTHONPATH=<a folder with another Triton> python tools/sweep_resources.py ...

The configs are bench/sweep_kernels.py's; the launches come from the planning functions the host
code launches through (tools/sm90.py, case_of). Exit status 1 if a config does not compile or
does not fit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
KERNELS = ("search", "ns")


def sweep_launches(ds=(8, 64), kernels=KERNELS):
    """(kernels, d, config override, [(kernel name, Launch)]) for every config of the sweep."""
    from pipeline.kernels import ns_fused_triton as nf
    from pipeline.kernels import ns_loss_triton as nt
    from pipeline.kernels import search_triton as st
    from sweep_kernels import ns_sweep, search_sweep
    from tools.sm90 import H100_SMS, K_BENCH, N_BENCH

    n, k = N_BENCH, K_BENCH
    for d in ds:
        if "search" in kernels:
            for cfg in search_sweep(d):
                plan = st.plan_search(n, k, d, dict(st.default_config(n, k, d), **cfg), H100_SMS)
                merge = [("merge", plan.merge)] if plan.merge else []
                yield "search", d, cfg, [("search", plan.search)] + merge
        if "ns" in kernels:
            for cfg in ns_sweep(d):
                shape = nt.ns_shape(n, k, d, cfg, "sweep_resources")
                yield "ns", d, cfg, [("rows", nf.fused_rows_launch(shape)),
                                     ("codes", nt.plan_codes_pass(shape, H100_SMS).launch)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, choices=(8, 64), action="append", help="only this D (repeatable)")
    ap.add_argument("--kernels", choices=KERNELS, action="append", help="only these kernels (repeatable)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    import triton

    from tools.sm90 import CONFIG_ENV_VARS, H100_MAX_SHARED, case_of, compile_sm90, resource_usage

    for var in CONFIG_ENV_VARS:         # the GPU's defaults under each override, as the sweep runs them
        os.environ.pop(var, None)
    rows, bad = [], 0
    print(f"Triton {triton.__version__}, sm_90; stack = spill bytes per thread; "
          f"shared must be <= {H100_MAX_SHARED} B")
    print(f"{'module':16s} {'D':>3s} {'kernel':7s} {'regs':>4s} {'stack':>5s} {'shared':>6s} {'s':>4s}  config")
    for module, d, cfg, launches in sweep_launches(tuple(a.d or (8, 64)), tuple(a.kernels or KERNELS)):
        for name, launch in launches:
            c = case_of(name, launch)
            t0 = time.perf_counter()
            try:
                row = dict(resource_usage(compile_sm90(c.fn, c.signature, c.constexprs, c.num_warps, c.num_stages)))
                row["fits"] = row["shared"] <= H100_MAX_SHARED
            except Exception as exc:     # report it and go on, as the sweep does
                row = dict(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            row = dict(module=module, d=d, kernel=name, config=cfg, compile_s=round(time.perf_counter() - t0, 2), **row)
            bad += "error" in row or not row["fits"]
            rows.append(row)
            print(f"{module:16s} {d:>3d} {name:7s} {row.get('regs', '-'):>4} {row.get('stack', '-'):>5} "
                  f"{row.get('shared', '-'):>6} {row['compile_s']:>4.1f}  {json.dumps(cfg)}"
                  + (f"  {row['error']}" if "error" in row else "" if row["fits"] else "  DOES NOT FIT"), flush=True)
    worst = max((r for r in rows if "stack" in r), key=lambda r: r["stack"], default=None)
    print(f"{len(rows)} kernels from {len({(r['module'], r['d'], json.dumps(r['config'])) for r in rows})} configs, "
          f"{bad} failing; compile {sum(r['compile_s'] for r in rows):.0f} s in all"
          + (f"; most stack {worst['stack']} B ({worst['module']} D={worst['d']} {worst['kernel']} "
             f"{json.dumps(worst['config'])})" if worst else ""))
    if a.json:
        command = "python " + " ".join(["tools/sweep_resources.py"] + sys.argv[1:])
        Path(a.json).write_text(json.dumps(dict(triton=triton.__version__, target="sm_90", command=command, rows=rows),
                                           indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
