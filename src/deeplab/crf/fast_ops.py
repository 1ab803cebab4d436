"""Tensor operations that numpy does several times faster than torch on the CPU (one thread).

Each takes and returns torch tensors, runs numpy on CPU tensors (zero-copy views both ways) and
the torch operation elsewhere (CUDA), with the same results.
"""

import numpy as np
import torch


def search_sorted(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """`torch.searchsorted(sorted_keys, queries)`: for ascending runs of queries numpy starts
    each binary search from the previous answer, 5-10x faster than torch's full search per
    query (the lattice's neighbour lookup)."""
    if queries.device.type != "cpu":
        return torch.searchsorted(sorted_keys, queries)
    return torch.from_numpy(np.searchsorted(sorted_keys.numpy(), queries.numpy()))


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The positions (int64) where a 1-D bool tensor is True; numpy's is ~10x faster."""
    if mask.device.type != "cpu":
        return torch.nonzero(mask)[:, 0]
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def transposed(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the transpose of a 2-D tensor, never sharing `x`'s memory (callers
    work on it in place); numpy's copy is ~3x faster."""
    if x.device.type != "cpu":
        return x.T.clone(memory_format=torch.contiguous_format)
    return torch.from_numpy(np.array(x.numpy().T, order="C"))
