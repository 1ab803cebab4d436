"""Whole-split CRF refinement: pydensecrf over worker processes, the torch backend in batches."""

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import numpy as np

from deeplab.crf import pydensecrf_backend
from deeplab.crf.dense_crf import DenseCRF, _like, _numpy_image, _numpy_probs, check_inputs

# Pixels per torch batch: bounds the lattice's memory (a few hundred bytes per pixel and label).
BATCH_PIXELS = 2_000_000


def refine_many(
    crf: DenseCRF,
    images: list,
    probs: list,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    kind: str = "probs",
) -> list:
    """Refine every (image, probs) pair; results come back in order, typed like each `probs`.

    pydensecrf: `num_workers` processes (None or 0: all cores; 1: in this process). torch: images
    are grouped into batches of about BATCH_PIXELS pixels (any sizes mix; no padding needed) and
    `num_workers` is unused. `progress(n)` is called as each n more images are done (e.g.
    `deeplab.runtime.progress.Progress.advance`). `kind`: "probs" or "logits", as for
    `DenseCRF.__call__`."""
    progress = progress or (lambda n: None)
    if len(images) != len(probs):
        raise ValueError(f"refine_many got {len(images)} images but {len(probs)} probability maps")
    if not crf.in_worker_processes:
        return _torch_batches(crf, images, probs, kind, progress)
    for i, (image, p) in enumerate(zip(images, probs, strict=True)):
        check_inputs(image, p, where=f"item {i}", kind=kind)
    jobs = [
        (_numpy_image(im), _numpy_probs(p), crf.params, kind)
        for im, p in zip(images, probs, strict=True)
    ]
    workers = min(num_workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        out = list(_counted(map(pydensecrf_backend.refine_star, jobs), progress))
    else:
        with worker_pool(workers) as pool:
            refined = pool.map(pydensecrf_backend.refine_star, jobs, chunksize=1)
            out = list(_counted(refined, progress))
    return [_like(q, p) for q, p in zip(out, probs, strict=True)]


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers never outlive the block: on an error or a stop (SystemExit
    from `deeplab.runtime.signals.exits_on_stop_signals`, Ctrl-C) they are killed, not waited for
    (a worker refines one image for seconds, and the pool would start the queued ones first)."""
    pool = new_pool(workers)
    try:
        yield pool
    except BaseException:
        kill_workers(pool)
        raise
    pool.shutdown()


def new_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes that leave Ctrl-C to the main process, which stops them."""
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=_ignore_sigint)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: queued jobs dropped, running workers killed (they hold no state)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle <3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=10)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _context():
    """Never plain fork: a child forked from a process whose torch/OpenMP threads hold a lock
    deadlocks forever (seen in validation). forkserver forks from a clean single-threaded server;
    the executor (unlike multiprocessing.Pool) raises instead of hanging if a worker dies."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([pydensecrf_backend.__name__])  # import torch once, not per worker
    return ctx


def _counted(items: Iterable, progress: Callable[[int], None]) -> Iterator:
    for item in items:
        progress(1)
        yield item


def _torch_batches(crf: DenseCRF, images: list, probs: list, kind: str, progress) -> list:
    out, start = [], 0
    while start < len(images):
        stop, pixels = start, 0
        while stop < len(images) and (
            stop == start or pixels + _pixels(probs[stop]) <= BATCH_PIXELS
        ):
            pixels += _pixels(probs[stop])
            stop += 1
        out += crf.refine_batch(images[start:stop], probs[start:stop], kind)
        progress(stop - start)
        start = stop
    return out


def _pixels(p) -> int:
    return int(np.prod(p.shape[1:]))
