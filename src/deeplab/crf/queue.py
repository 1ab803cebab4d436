"""Refine CRF inputs in the background while the network computes the next images.

Validation used to run the network over a chunk of images, then stop while the CRF refined the
chunk. `RefineQueue` takes each image as the network produces it: with the pydensecrf backend
and two or more workers, a process pool starts refining at once and the caller collects results
as they finish, so the CRF workers and the network run at the same time. The torch backend runs
`chunk` images as one batch on the device of their scores (the GPU during GPU evaluation).
"""

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor, wait

from deeplab.crf import pydensecrf_backend
from deeplab.crf.dense_crf import DenseCRF, _numpy_image, _numpy_probs, check_inputs
from deeplab.crf.parallel import kill_workers, new_pool, refine_many


class RefineQueue:
    """put(key, image, scores) -> the (key, refined probs) pairs finished so far; drain() -> the
    rest. Results come back in completion order, so count them with an order-free sum (such as a
    confusion matrix). `kind` is "probs" or "logits", as for `DenseCRF.__call__`.

    At most `max_pending` images (default 2 * chunk) wait in the pool: beyond that `put` waits
    for the oldest, which bounds memory when the network outpaces the CRF."""

    def __init__(
        self,
        crf: DenseCRF,
        num_workers: int | None = 1,
        chunk: int = 16,
        kind: str = "probs",
        max_pending: int | None = None,
    ):
        self.crf, self.chunk, self.kind = crf, max(1, chunk), kind
        self.workers = num_workers or os.cpu_count() or 1
        self.max_pending = max_pending or 2 * self.chunk
        self.background = crf.in_worker_processes and self.workers >= 2
        self._pool: ProcessPoolExecutor | None = None
        self._running: deque = deque()  # (key, future), oldest first
        self._buffer: list = []  # (key, image, scores) for the in-process path

    def put(self, key, image, scores) -> list[tuple]:
        check_inputs(image, scores, where=str(key), kind=self.kind)
        if not self.background:
            self._buffer.append((key, image, scores))
            return self._refine_buffer() if len(self._buffer) >= self.chunk else []
        if self._pool is None:
            self._pool = new_pool(self.workers)
        job = (_numpy_image(image), _numpy_probs(scores), self.crf.params, self.kind)
        self._running.append((key, self._pool.submit(pydensecrf_backend.refine_star, job)))
        if len(self._running) > self.max_pending:
            wait([self._running[0][1]])
        return self._finished()

    def drain(self) -> list[tuple]:
        """Refine everything still queued, wait for it, and stop the worker processes."""
        out = self._refine_buffer()
        try:
            wait([future for _, future in self._running])
            out += self._finished()
        except BaseException:  # a worker's error, a stop: workers killed, not waited for
            self.close(kill=True)
            raise
        self.close()
        return out

    def close(self, kill: bool = False) -> None:
        if self._pool is not None:
            if kill:
                kill_workers(self._pool)
            else:
                self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self._running.clear()

    def _finished(self) -> list[tuple]:
        done = [(key, future) for key, future in self._running if future.done()]
        for item in done:
            self._running.remove(item)
        return [(key, future.result()) for key, future in done]

    def _refine_buffer(self) -> list[tuple]:
        if not self._buffer:
            return []
        keys, images, scores = zip(*self._buffer, strict=True)
        self._buffer = []
        refined = refine_many(self.crf, list(images), list(scores), self.workers, kind=self.kind)
        return list(zip(keys, refined, strict=True))
