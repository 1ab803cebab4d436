"""The permutohedral lattice (Adams, Baek & Davis 2010) exactly as Krähenbühl's densecrf builds it.

pydensecrf filters with this lattice, and its own approximation error (the [1 2 1] blur, the
barycentric splat) is large at the bilateral kernel's 50-120 px scale, so matching it means
rebuilding the same lattice, not approximating a Gaussian. Every step follows densecrf's SSE code
path (the one x86 builds compile) operation by operation in float32: the elevation with the
scale factors, round-half-even to the nearest remainder-0 point, the rank (with the same tie
rule), the barycentric weights, the splat, the blur along each of the d+1 axes in order with
weights 1 and 1/2, and the slice with the constant alpha = 1 / (1 + 2^-d).

The C++ hash table becomes a sort: every lattice key is packed into one int64 (batch index
included, so several images share one lattice without touching each other), `torch.unique`
numbers the lattice points, and `searchsorted` finds the blur neighbours. Everything is tensor
code, so it runs unchanged on CPU and CUDA.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from deeplab.errors import UserError

# densecrf's SSE path elevates 4 points at a time and pads the last block with zero features;
# those padding points still create lattice vertices, which the blur then passes mass through.
SSE_BLOCK = 4


def _scale_factors(d: int) -> list[float]:
    """Diagonal of the elevation matrix E, rounded to float32 as densecrf stores them."""
    inv_std_dev = np.float32(np.sqrt(2.0 / 3.0) * (d + 1))
    return [
        float(np.float32(1.0 / np.sqrt((i + 2) * (i + 1)) * np.float64(inv_std_dev)))
        for i in range(d)
    ]


def _simplex(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (P, d) -> keys of their d+1 enclosing vertices (P, d+1, d) int64 and the
    barycentric weights (P, d+1) float32, both indexed by the vertex's remainder."""
    n, d = features.shape
    f32 = dict(dtype=torch.float32, device=features.device)
    scale = _scale_factors(d)
    down = torch.tensor(1.0 / (d + 1), **f32)  # float32(1/(d+1)), as _mm_set1_ps(1.0f/(d+1))
    up = float(d + 1)

    # Elevate onto the hyperplane sum(x) = 0: y = E p, accumulated from the last axis down.
    elevated = torch.empty(n, d + 1, **f32)
    running = torch.zeros(n, **f32)
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[:, j] = running - float(j) * cf
        running = running + cf
    elevated[:, 0] = running

    # Nearest remainder-0 point: round each coordinate / (d+1) half to even (SSE rounding).
    rounded = torch.round(elevated * down)
    rem0 = rounded * up
    total = rounded.sum(1).to(torch.int64)

    # Rank of each coordinate of (elevated - rem0), with densecrf's tie rule: for i < j the
    # pair counts toward i only when diff_i < diff_j, otherwise toward j.
    diff = (elevated - rem0).T.contiguous()
    rank_t = torch.zeros(d + 1, n, dtype=torch.int64, device=features.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            i_lower = diff[i] < diff[j]
            rank_t[i] += i_lower
            rank_t[j] += ~i_lower
    rank = rank_t.T

    # Bring the point back onto the plane when the rounded sum is not 0.
    rank = rank + total[:, None]
    low, high = rank < 0, rank > d
    rank = rank + (d + 1) * (low.long() - high.long())
    rem0 = rem0 + up * (low.float() - high.float())

    # Barycentric weights: b[d - rank_i] += v_i, b[d - rank_i + 1] -= v_i, then wrap around.
    v = (elevated - rem0) * down
    by_rank = torch.empty_like(v).scatter_(1, rank, v)  # by_rank[:, r] = v of the rank-r coord
    bary = torch.empty(n, d + 1, **f32)
    for p in range(1, d + 1):
        bary[:, p] = by_rank[:, d - p] - by_rank[:, d - p + 1]
    bary[:, 0] = by_rank[:, d] + (1.0 - by_rank[:, 0])

    # Vertex r of the simplex: rem0 + canonical[r][rank] on the first d coordinates.
    r = torch.arange(d + 1, device=features.device)[None, :, None]
    wrap = (rank[:, None, :d] > d - r).long()
    keys = rem0[:, None, :d].long() + r - (d + 1) * wrap
    return keys, bary


@dataclass
class Lattice:
    """A built lattice over P points and M lattice points (row 0 of every lattice array is an
    always-empty slot that absent neighbours point to).

    `offsets` (P, d+1): the lattice point of each vertex; `weights` (P, d+1): barycentric weights;
    `neighbors` (d+1, 2, M): blur neighbours per axis (0 where absent); `splat` (M+1, P) and
    `slice` (P, M+1): the same weights as sparse CSR matrices. Their entries are stored in
    densecrf's order of accumulation (pixel order into a lattice point, remainder order out of
    it), so the sparse products reproduce its float sums bit for bit on CPU."""

    offsets: torch.Tensor
    weights: torch.Tensor
    neighbors: torch.Tensor
    splat: torch.Tensor
    slice: torch.Tensor
    alpha: float

    @classmethod
    def build(cls, features: list[torch.Tensor]) -> "Lattice":
        """One lattice for several point sets (one per image), each (N_b, d) float32; the sets
        never interact. Points come out in the order given, image after image."""
        d = features[0].shape[1]
        device = features[0].device
        keys, weights, batch, real = [], [], [], []
        for b, f in enumerate(features):
            pad = -f.shape[0] % SSE_BLOCK
            if pad:  # the padding points all sit at the origin: one is enough for the keys
                f = torch.cat([f, f.new_zeros(1, d)])
            k, w = _simplex(f.float())
            keys.append(k)
            weights.append(w[: w.shape[0] - (1 if pad else 0)])
            batch.append(torch.full((f.shape[0],), b, dtype=torch.int64, device=device))
            mask = torch.ones(f.shape[0], dtype=torch.bool, device=device)
            if pad:
                mask[-1] = False
            real.append(mask)
        keys, batch, real = torch.cat(keys), torch.cat(batch), torch.cat(real)

        # Pack (batch, key) into one int64, leaving room for the +-d neighbour steps.
        lo = keys.amin(dim=(0, 1)) - (d + 1)
        radix = keys.amax(dim=(0, 1)) - lo + (d + 2)
        strides, stride = [], 1
        for k in reversed(range(d)):
            strides.insert(0, stride)
            stride *= int(radix[k])
        if stride * len(features) >= 2**62:
            raise UserError(
                "CRF lattice keys overflow int64: a kernel's std (crf.*_std) is too small for "
                "this image size; use larger pos_xy_std / bi_xy_std / bi_rgb_std."
            )
        strides_t = torch.tensor(strides, dtype=torch.int64, device=device)
        codes = ((keys - lo) * strides_t).sum(2) + (batch * stride)[:, None]

        uniq, inverse = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)
        inverse = inverse.reshape(codes.shape)[real] + 1

        # Neighbours along axis j: every coordinate -1 except coordinate j +d (and the reverse).
        total = int(strides_t.sum())
        neighbors = []
        for j in range(d + 1):
            step = -total + ((d + 1) * strides[j] if j < d else 0)
            pair = []
            for delta in (step, -step):
                target = uniq + delta
                pos = torch.searchsorted(uniq, target).clamp_max(uniq.numel() - 1)
                pair.append(torch.where(uniq[pos] == target, pos + 1, 0))
            neighbors.append(torch.stack(pair))
        weights = torch.cat(weights)
        alpha = float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d)))
        return cls(
            offsets=inverse,
            weights=weights,
            neighbors=torch.stack(neighbors),
            splat=_splat_matrix(inverse, weights, uniq.numel() + 1),
            slice=_csr(
                torch.arange(0, inverse.numel() + 1, d + 1, device=device),
                inverse.reshape(-1),
                (weights * alpha).reshape(-1),
                (inverse.shape[0], uniq.numel() + 1),
            ),
            alpha=alpha,
        )

    def filter(self, values: torch.Tensor, single_channel_path: bool = False) -> torch.Tensor:
        """Gaussian-filter per-point values (P, C) float32: splat, blur, slice.

        `single_channel_path` reproduces densecrf's scalar routine (used for <= 2 channels, i.e.
        the normalisation), which multiplies by alpha after the weight instead of before."""
        d1 = self.weights.shape[1]
        lattice = self.splat @ values
        for j in range(d1):
            n1, n2 = self.neighbors[j]
            # new = old + (n1 + n2) / 2; row 0 (the absent neighbour) stays zero.
            side = torch.index_select(lattice, 0, n1).add_(torch.index_select(lattice, 0, n2))
            blurred = torch.empty_like(lattice)
            blurred[0] = 0
            torch.add(lattice[1:], side.mul_(0.5), out=blurred[1:])
            lattice = blurred
        if not single_channel_path:
            return self.slice @ lattice
        out = values.new_zeros(values.shape)
        for r in range(d1):
            out += (
                self.weights[:, r, None] * torch.index_select(lattice, 0, self.offsets[:, r])
            ) * self.alpha
        return out


def _csr(crow: torch.Tensor, col: torch.Tensor, value: torch.Tensor, size: tuple) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, value, size)


def _splat_matrix(offsets: torch.Tensor, weights: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, P) CSR: row o holds the weights of the vertices at lattice point o, pixel-ordered."""
    target = offsets.reshape(-1)
    order = torch.sort(target, stable=True).indices
    counts = torch.bincount(target, minlength=rows)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    pixel = torch.div(order, offsets.shape[1], rounding_mode="floor")
    return _csr(crow, pixel, weights.reshape(-1)[order], (rows, offsets.shape[0]))
