"""A train DataLoader that a checkpoint taken mid-epoch resumes exactly (SIGTERM, preemption).

Lightning saves and restores the `state_dict` of loaders that have one. Without it a run resumed
mid-epoch draws a new order and sees again the images the epoch already had. This loader
records how many batches the epoch handed out, the RNG state its order was drawn from, and the
RNG state at the checkpoint; on resume it redraws the same order, skips the batches already done
(their indices only: nothing is loaded) and puts the RNGs back, so the rest of the epoch gets the
same images, augmentation and dropout draws as the uninterrupted run. Exact with
`data.num_workers=0`; worker processes keep RNG state of their own, so with workers the resumed
epoch sees the same images in the same order but other augmentation draws.
"""

import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader


def rng_states() -> dict:
    """The global RNG states, in types a `weights_only` checkpoint load accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["random"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableLoader(DataLoader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._done = 0  # batches the current epoch handed out
        self._order_rng: torch.Tensor | None = None  # torch RNG when the epoch's order was drawn
        self._resume: dict | None = None

    @property
    def _index_sampler(self) -> Iterable:
        return _Replay(super()._index_sampler, self)

    def __iter__(self) -> Iterator:
        self._done = self._resume["batches"] if self._resume else 0
        for batch in super().__iter__():
            self._done += 1  # before the step: a checkpoint after it counts this batch done
            yield batch

    def state_dict(self) -> dict:
        return {"batches": self._done, "order_rng": self._order_rng, "rng": rng_states()}

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint at the end of an epoch (or before any batch) starts the next one afresh
        if 0 < state["batches"] < len(self) and state["order_rng"] is not None:
            self._resume = state


class _Replay:
    """The loader's batches of indices, replayed from a checkpoint when one is pending."""

    def __init__(self, batches: Iterable, loader: ResumableLoader):
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)  # the whole epoch: Lightning counts the done batches itself

    def __iter__(self) -> Iterator:
        resume, self.loader._resume = self.loader._resume, None
        if resume:
            torch.set_rng_state(resume["order_rng"])
        self.loader._order_rng = torch.get_rng_state()
        batches = iter(self.batches)
        if resume:
            for _ in range(resume["batches"]):
                next(batches)
            set_rng_states(resume["rng"])
        yield from batches
