"""The permutohedral lattice (Adams, Baek & Davis 2010) exactly as Krähenbühl's densecrf builds it.

pydensecrf filters with this lattice, and its own approximation error (the [1 2 1] blur, the
barycentric splat) is large at the bilateral kernel's 50-120 px scale, so matching it means
rebuilding the same lattice, not approximating a Gaussian. Every step follows densecrf's SSE code
path (the one x86 builds compile) operation by operation in float32: the elevation with the
scale factors, round-half-even to the nearest remainder-0 point, the rank (with the same tie
rule), the barycentric weights, the splat, the blur along each of the d+1 axes in order with
weights 1 and 1/2, and the slice with the constant alpha = 1 / (1 + 2^-d).

The C++ hash table becomes a sort: every vertex key is packed into one int64 (batch index
included, so several images share one lattice without touching each other) straight from the
remainder-0 point and the rank, one stable sort numbers the lattice points, and `searchsorted`
finds the blur neighbours. Everything is tensor code, so it runs unchanged on CPU and CUDA.
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


def _simplex(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (P, d) -> the remainder-0 point rem0 (d+1, P) float32, the rank of each coordinate
    (d+1, P) int64 and the barycentric weights (d+1, P) float32 indexed by remainder. Coordinate
    major, so that every per-coordinate step runs over contiguous memory."""
    n, d = features.shape
    f32 = dict(dtype=torch.float32, device=features.device)
    scale = _scale_factors(d)
    down = torch.tensor(1.0 / (d + 1), **f32)  # float32(1/(d+1)), as _mm_set1_ps(1.0f/(d+1))
    up = float(d + 1)
    f = features.T.contiguous()

    # Elevate onto the hyperplane sum(x) = 0: y = E p, accumulated from the last axis down.
    elevated = torch.empty(d + 1, n, **f32)
    running = torch.zeros(n, **f32)
    for j in range(d, 0, -1):
        cf = f[j - 1] * scale[j - 1]
        elevated[j] = running - float(j) * cf
        running = running + cf
    elevated[0] = running

    # Nearest remainder-0 point: round each coordinate / (d+1) half to even (SSE rounding).
    rounded = torch.round(elevated * down)
    rem0 = rounded * up
    total = rounded.sum(0).to(torch.int64)

    # Rank of each coordinate of (elevated - rem0), with densecrf's tie rule: for i < j the
    # pair counts toward i when diff_i < diff_j, otherwise toward j.
    diff = elevated - rem0
    rank = torch.zeros(d + 1, n, dtype=torch.int64, device=features.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            i_lower = diff[i] < diff[j]
            rank[i] += i_lower
            rank[j] += ~i_lower

    # Bring the point back onto the plane when the rounded sum is not 0.
    rank += total
    low, high = rank < 0, rank > d
    rank += (d + 1) * (low.long() - high.long())
    rem0 += up * (low.float() - high.float())

    # Barycentric weights: b[d - rank_i] += v_i, b[d - rank_i + 1] -= v_i, then wrap around.
    v = (elevated - rem0) * down
    by_rank = torch.empty_like(v).scatter_(0, rank, v)  # by_rank[r] = v of the rank-r coord
    bary = torch.empty(d + 1, n, **f32)
    bary[1:] = by_rank[:d].flip(0) - by_rank[1:].flip(0)
    bary[0] = by_rank[d] + (1.0 - by_rank[0])
    return rem0, rank, bary


def _vertex_codes(rem0, rank, batch, lo, strides) -> torch.Tensor:
    """Packed int64 key of each point's d+1 vertices (P, d+1), without building the keys.

    Vertex r has key rem0 + r - (d+1) [rank > d - r] on the first d coordinates, so its code is
    base + r sum(strides) - (d+1) sum(strides over the coordinates with rank >= d+1-r): the last
    sum grows with r and is a cumulative sum of the strides scattered at d+1-rank."""
    d1, n = rank.shape
    d = d1 - 1
    base = ((rem0[:d].long() - lo[:, None]) * strides[:, None]).sum(0) + batch
    wrapped = rem0.new_zeros(d1 + 1, n, dtype=torch.int64)
    wrapped.scatter_add_(0, d1 - rank[:d], strides[:, None].expand(d, n))
    r = torch.arange(d1, device=rank.device)[:, None]
    codes = base + r * int(strides.sum()) - d1 * wrapped[:d1].cumsum(0)
    return codes.T


@dataclass
class Lattice:
    """A built lattice over P points and M lattice points (row 0 of every lattice array is an
    always-empty slot that absent neighbours point to).

    `offsets` (P, d+1): the lattice point of each vertex; `weights` (P, d+1): barycentric weights;
    `neighbors` (d+1, 2, M): blur neighbours per axis (0 where absent); `splat_counts` (M+1,)
    vertices per lattice point and `splat_entry` (P (d+1) indices into the flattened
    `offsets`, sorted by lattice point and, within one, by pixel, the order densecrf accumulates
    them in): the splat as a sparse matrix (M+1, P), see `splat`."""

    offsets: torch.Tensor
    weights: torch.Tensor
    neighbors: torch.Tensor
    splat_counts: torch.Tensor
    splat_entry: torch.Tensor
    alpha: float

    @property
    def size(self) -> int:
        """Rows of the lattice arrays: M lattice points plus the empty row 0."""
        return self.neighbors.shape[2] + 1

    @classmethod
    def build(cls, features: list[torch.Tensor]) -> "Lattice":
        """One lattice for several point sets (one per image), each (N_b, d) float32; the sets
        never interact. Points come out in the order given, image after image."""
        d = features[0].shape[1]
        device = features[0].device
        parts, batch, real = [], [], []
        for b, f in enumerate(features):
            pad = -f.shape[0] % SSE_BLOCK
            if pad:  # the padding points all sit at the origin: one is enough for the keys
                f = torch.cat([f, f.new_zeros(1, d)])
            parts.append(_simplex(f.float()))
            batch.append(torch.full((f.shape[0],), b, dtype=torch.int64, device=device))
            mask = torch.ones(f.shape[0], dtype=torch.bool, device=device)
            mask[f.shape[0] - 1] = not pad
            real.append(mask)
        rem0, rank, bary = (torch.cat(x, 1) for x in zip(*parts, strict=True))
        batch, real = torch.cat(batch), torch.cat(real)
        padded = not bool(real.all())

        # Pack (batch, key) into one int64, leaving room for keys (rem0 - d-1 .. rem0 + d) and
        # their +-d neighbour steps.
        coords = rem0[:d].long()
        lo = coords.amin(1) - 2 * (d + 1)
        radix = coords.amax(1) - lo + 2 * (d + 1) + 1
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
        codes = _vertex_codes(rem0, rank, batch * stride, lo, strides_t).reshape(-1)

        # One stable sort numbers the lattice points (1..M, in code order) and gives the splat
        # order: equal codes keep their (pixel, remainder) order.
        sorted_codes, order = torch.sort(codes, stable=True)
        uniq, sorted_ids = torch.unique_consecutive(sorted_codes, return_inverse=True)
        ids = torch.empty_like(codes).scatter_(0, order, sorted_ids + 1)
        d1 = d + 1
        offsets = ids.reshape(-1, d1)[real] if padded else ids.reshape(-1, d1)

        # Splat entries: the sorted ones that belong to real points, renumbered without pads.
        splat_entry = order
        if padded:
            real_entry = real.repeat_interleave(d1)
            splat_entry = (torch.cumsum(real_entry, 0) - 1)[order[real_entry[order]]]
        splat_counts = torch.bincount(offsets.reshape(-1), minlength=uniq.numel() + 1)

        # Neighbours along axis j: every coordinate -1 except coordinate j +d (and the reverse).
        total = int(strides_t.sum())
        steps = torch.tensor(
            [-total + (d1 * strides[j] if j < d else 0) for j in range(d1)], device=device
        )
        target = (uniq[None, :] + steps[:, None]).reshape(-1)
        pos = torch.searchsorted(uniq, target).clamp_max(uniq.numel() - 1)
        n1 = torch.where(uniq[pos] == target, pos + 1, 0).reshape(d1, -1)
        # The reverse step needs no search: y = n1(x) exactly when x = n2(y).
        n2 = torch.zeros_like(n1)
        axis, point = torch.nonzero(n1, as_tuple=True)
        n2[axis, n1[axis, point] - 1] = point + 1
        alpha = float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d)))
        return cls(
            offsets=offsets,
            weights=bary.T[real].contiguous() if padded else bary.T.contiguous(),
            neighbors=torch.stack([n1, n2], 1),
            splat_counts=splat_counts,
            splat_entry=splat_entry,
            alpha=alpha,
        )

    def splat(self, scale: torch.Tensor | None = None) -> tuple:
        """The splat matrix (M+1, P) as CSR parts (entries per row, column, value), the weights
        times a per-pixel `scale` (P,) if given."""
        d1 = self.weights.shape[1]
        col = torch.div(self.splat_entry, d1, rounding_mode="floor")
        value = self.weights.reshape(-1)[self.splat_entry]
        if scale is not None:
            value = value * scale[col]
        return self.splat_counts, col, value

    def blur(self, lattice: torch.Tensor) -> torch.Tensor:
        """In place along each of the d+1 axes in order: new = old + (n1 + n2) / 2."""
        for n1, n2 in self.neighbors:
            side = torch.index_select(lattice, 0, n1).add_(torch.index_select(lattice, 0, n2))
            lattice[1:].add_(side, alpha=0.5)  # row 0, the absent neighbour, stays zero
        return lattice

    def filter_scalar(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter one value per point (P,) as densecrf's scalar routine does (used for
        <= 2 channels, i.e. the normalisation): alpha multiplies after the weight. The
        many-channel filter of the mean field is `meanfield.Filters`."""
        lattice = values.new_zeros(self.size, 1)
        lattice[:, 0].index_add_(
            0, self.offsets.reshape(-1), (self.weights * values[:, None]).reshape(-1)
        )
        lattice = self.blur(lattice)[:, 0]
        return ((self.weights * lattice[self.offsets]) * self.alpha).sum(1)


def _crow(counts: torch.Tensor) -> torch.Tensor:
    """CSR row pointers from entries per row."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _csr(crow: torch.Tensor, col: torch.Tensor, value: torch.Tensor, size: tuple) -> torch.Tensor:
    """A CSR matrix, with int32 indices when they fit: the CPU product converts int64 ones to
    int32 on every call."""
    if max(value.numel(), *size) < 2**31:
        crow, col = crow.int(), col.int()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, value, size)
