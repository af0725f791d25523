"""prepare's decode worker processes. Each task is a run of files; a worker decodes them into
a slot of a shared-memory ring and returns only the unreadable files' reasons, so decoded
pixels never travel through a pipe (pickling them there capped two workers at about 1.5x one
on this 2-core machine). Results are consumed in file order, whatever the number of workers."""
from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from multiprocessing.shared_memory import SharedMemory
from typing import Iterator

import numpy as np

from .decode import decode_files

FILES_PER_TASK = 16
TASKS_PER_WORKER = 4          # in flight per worker: bounds the decoded images waiting to be written

_ring: np.ndarray | None = None      # in a worker: the shared slots, (tasks, FILES_PER_TASK, bytes)
_shm: SharedMemory | None = None


def _attach(name: str, shape: tuple[int, ...]) -> None:
    global _ring, _shm
    _shm = SharedMemory(name=name)
    _ring = np.ndarray(shape, dtype=np.uint8, buffer=_shm.buf)


def _decode_task(root: str, rels: list[str], side: int, slot: int) -> list[str | None]:
    out: list[str | None] = []
    rows = _ring[slot]
    for j, image in enumerate(decode_files(root, rels, side)):
        if isinstance(image, str):
            out.append(image)
        else:
            rows[j, :image.size] = image.reshape(-1)
            out.append(None)
    return out


class DecodePool:
    """``workers`` spawned processes (spawn: safe beside the stage's Prefect and MLflow threads)
    decoding into a ring of ``workers * TASKS_PER_WORKER`` slots of images up to ``max_side``."""

    def __init__(self, workers: int, max_side: int):
        self.workers = workers
        self.slots = workers * TASKS_PER_WORKER
        shape = (self.slots, FILES_PER_TASK, max_side * max_side * 3)
        self.shm = SharedMemory(create=True, size=int(np.prod(shape)))
        self.ring = np.ndarray(shape, dtype=np.uint8, buffer=self.shm.buf)
        self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_attach,
                                                               initargs=(self.shm.name, shape))

    def decoded(self, root: str, rels: list[str], side: int) -> Iterator[np.ndarray | str]:
        """Each file of ``rels`` in order: its (side, side, 3) image (a view into the ring, valid
        until the next item is asked for) or the reason it is unreadable."""
        tasks = (rels[i:i + FILES_PER_TASK] for i in range(0, len(rels), FILES_PER_TASK))
        free = deque(range(self.slots))
        pending: deque = deque()
        for task in itertools.chain(tasks, [None]):
            if task is not None:
                slot = free.popleft()
                pending.append((slot, self.pool.apply_async(_decode_task, (root, task, side, slot))))
            while pending and (task is None or not free):
                slot, result = pending.popleft()
                for j, reason in enumerate(result.get()):
                    yield reason if reason is not None else \
                        self.ring[slot, j, :side * side * 3].reshape(side, side, 3)
                free.append(slot)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
        self.shm.close()
        self.shm.unlink()


def decoded_in_process(root: str, rels: list[str], side: int) -> Iterator[np.ndarray | str]:
    """The same as :meth:`DecodePool.decoded`, in this process (one worker)."""
    for i in range(0, len(rels), FILES_PER_TASK):
        yield from decode_files(root, rels[i:i + FILES_PER_TASK], side)
