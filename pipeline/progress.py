"""A progress bar: tqdm when available, else a line every few seconds (the core must not need
tqdm). Standard library only, so prepare's import stays light."""
from __future__ import annotations

import sys
import time
from typing import Mapping


class Progress:
    def __init__(self, name: str, total: int, initial: int, enabled: bool, unit: str = "it"):
        self.bar = None
        self.enabled = enabled
        self.name, self.total, self.unit, self.last = name, total, unit, 0.0
        self.t0, self.initial = time.monotonic(), initial
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=name, mininterval=1.0, file=sys.stderr,
                                dynamic_ncols=True, unit=unit)
            except ImportError:
                pass

    def update(self, done: int, metrics: Mapping[str, float] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = done
            if metrics:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}, refresh=False)
            self.bar.refresh()
        elif metrics and (time.monotonic() - self.last > 5 or done == self.total):
            self.last = time.monotonic()
            rate = (done - self.initial) / max(self.last - self.t0, 1e-9)
            body = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.name}] {done}/{self.total} ({rate:.1f} {self.unit}/s) {body}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
