"""Find the operations in a block of torch code that make the host wait for the device.

A development tool (tests and benches use it; the pipeline does not). The training steps
promise no host syncs in the hot loop: metrics stay 0-dim device
tensors, every quantizer and code-replacement round is made of fixed-shape tensor ops, and
the trainer reads its sums back once per log interval. Two ways to check that:

- ``HostSyncRecorder`` (any device, so the CPU where CI runs): a ``TorchDispatchMode`` that
  records each ATen op which, on a GPU, reads a device value back to the host or sizes its
  output from device values. The list follows the ops torch's own sync debug mode flags
  (``torch.cuda.set_sync_debug_mode``) and pytorch/pytorch#108968. It sees the ops torch
  dispatches, and on the CPU there is no device to copy to or from: a ``.cpu()`` or
  ``.tolist()`` of a CPU tensor, or a host tensor's ``.to("cuda")`` (a blocking copy from
  pageable memory, which first waits for all queued work), go unseen there.
- ``count_cuda_syncs``: torch's sync debug mode itself on a CUDA device, counting its
  warnings. It sees those copies too, and syncs inside ``torch.compile``d code.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

# Ops that always wait for the device: a value read back to the host, or an output whose
# size depends on device values.
_ALWAYS = {
    aten._local_scalar_dense.default,       # .item(), float(t), int(t), bool(t), t[0-dim index]
    aten.equal.default, aten.allclose.default,          # return a Python bool
    aten.nonzero.default, aten.masked_select.default,       # (argwhere decomposes to nonzero)
    aten._unique.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.bincount.default,
}


def _is_bool_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


def syncs_on_device(func, args, kwargs) -> bool:
    """True if this ATen call makes the host wait for the device on a GPU."""
    if func in _ALWAYS:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return _is_bool_index(args[1])          # a mask index becomes nonzero()
    if func is aten.repeat_interleave.Tensor or func is aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size") is None
    if func is aten.multinomial.default:
        # the distribution check runs on the host unless sampling with replacement, n > 1
        n = args[1]
        replacement = args[2] if len(args) > 2 else kwargs.get("replacement", False)
        return not replacement or n == 1
    return False


class HostSyncRecorder(TorchDispatchMode):
    """Records (in ``self.syncs``) the name of each op that would sync on a GPU, and every op
    with its tensor outputs (``self.outputs``: op name, shape, bytes of the storage behind it, so
    views count once), for checks that a step materialises no large intermediate.

    >>> with HostSyncRecorder() as rec:
    ...     step()
    >>> assert not rec.syncs, rec.syncs
    """

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.outputs: list[tuple[str, tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if syncs_on_device(func, args, kwargs):
            self.syncs.append(str(func))
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.outputs.append((func.overloadpacket.__name__, tuple(t.shape), t.untyped_storage().nbytes()))
        return out

    @property
    def ops(self) -> list[str]:
        """Names of the ops that ran (those with tensor outputs)."""
        return [name for name, _, _ in self.outputs]


def count_cuda_syncs(fn: Callable[[], object], calls: int = 1) -> int:
    """Synchronizing CUDA operations in ``calls`` calls of ``fn()``, as counted by torch's sync
    debug mode (one warning per sync)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)
