"""The permutohedral lattice (Adams, Baek & Davis 2010) exactly as Krähenbühl's densecrf builds it.

pydensecrf filters with this lattice, and its own approximation error (the [1 2 1] blur, the
barycentric splat) is large at the bilateral kernel's 50-120 px scale, so matching it means
rebuilding the same lattice, not approximating a Gaussian. Every step follows densecrf's SSE code
path (the one x86 builds compile) operation by operation in float32: the elevation with the
scale factors, round-half-even to the nearest remainder-0 point, the rank (with the same tie
rule), the barycentric weights, the splat, the blur along each of the d+1 axes in order with
weights 1 and 1/2, and the slice with the constant alpha = 1 / (1 + 2^-d).

The C++ hash table becomes a sort: every vertex key is packed into one integer (the image index
included, so several images share one lattice without touching each other; int32 when the
coordinate ranges allow, else int64) straight from the remainder-0 point and the rank, one
stable sort numbers the lattice points, and `searchsorted` finds the blur neighbours.
Everything is tensor code, so it runs unchanged on CPU and CUDA.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deeplab.crf.fast_ops import flat_nonzero, search_sorted, transposed
from deeplab.runtime.errors import UserError

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
    """Points (P, d) -> the remainder-0 point over d+1 (d+1, P) float32 (small integers), the
    rank of each coordinate (d+1, P) int64 and the barycentric weights (d+1, P) float32 indexed
    by remainder. Coordinate major, so that every per-coordinate step runs over contiguous
    memory."""
    n, d = features.shape
    d1 = d + 1
    f32 = dict(dtype=torch.float32, device=features.device)
    scale = _scale_factors(d)
    down = torch.tensor(1.0 / d1, **f32)  # float32(1/(d+1)), as _mm_set1_ps(1.0f/(d+1))
    up = float(d1)
    f = transposed(features)

    # Elevate onto the hyperplane sum(x) = 0: y = E p, accumulated from the last axis down.
    elevated = torch.empty(d1, n, **f32)
    running = torch.zeros(n, **f32)
    for j in range(d, 0, -1):
        cf = f[j - 1] * scale[j - 1]
        elevated[j] = running - float(j) * cf
        running = running + cf
    elevated[0] = running

    # Nearest remainder-0 point (rounded * (d+1)): round each coordinate / (d+1) half to even
    # (SSE rounding). rounded * up is exact (small integers), so subtracting it with alpha is
    # elevated - rounded * up however the kernel fuses it. The (d+1, P) arrays are the build's
    # bulk (Cityscapes size: 50 MB each), so each buffer is reused once its values are spent.
    rounded = torch.mul(elevated, down).round_()
    diff = torch.sub(elevated, rounded, alpha=up)

    # Rank of each coordinate of diff, with densecrf's tie rule: for i < j the pair counts toward
    # i when diff_i < diff_j, otherwise toward j. So rank_i starts at i (the pairs with j < i)
    # and each pair where i is lower moves one count from j to i. In int8: a quarter the memory
    # traffic of int64 in these 45 passes.
    rank = torch.arange(d1, dtype=torch.int8, device=features.device)[:, None].repeat(1, n)
    for i in range(d):
        for j in range(i + 1, d1):
            i_lower = torch.lt(diff[i], diff[j]).view(torch.int8)
            rank[i] += i_lower
            rank[j] -= i_lower

    # Bring the point back onto the plane when the rounded sum is not 0.
    rank += rounded.sum(0).to(torch.int8)
    wrap = (rank < 0).view(torch.int8) - (rank > d).view(torch.int8)
    rank += d1 * wrap
    rounded += wrap
    rank = rank.long()

    # Barycentric weights: b[d - rank_i] += v_i, b[d - rank_i + 1] -= v_i, then wrap around.
    v = elevated.sub_(rounded, alpha=up).mul_(down)
    by_rank = diff.scatter_(0, rank, v)  # by_rank[r] = v of the rank-r coord
    bary = v
    for i in range(1, d1):
        torch.sub(by_rank[d - i], by_rank[d - i + 1], out=bary[i])
    torch.add(by_rank[d], 1.0 - by_rank[0], out=bary[0])
    return rounded, rank, bary


def _vertex_codes(rounded, rank, lo, strides, first_code) -> torch.Tensor:
    """Packed key of each point's d+1 vertices (d+1, P), in the dtype of `strides`; `rank` is
    spent (overwritten).

    Vertex r's key is rem0 + r - (d+1) [rank > d - r] on every coordinate, so all its coordinates
    are r modulo d+1: the key packs as r + (d+1) code(q) with q = rounded - [rank > d - r]. The
    remainder goes last so that code order keeps a point's vertices, and so the pixels they
    read, close together (the splat runs in that order). The subtracted part of code(q) grows
    with r: a cumulative sum of the strides scattered at d+1-rank."""
    d1, n = rank.shape
    d = d1 - 1
    dtype = strides.dtype
    base = first_code.clone()
    for k in range(d):
        base += rounded[k].to(dtype).sub_(lo[k]).mul_(strides[k])
    wrapped = base.new_zeros(d1 + 1, n)
    wrapped.scatter_add_(0, rank[:d].neg_().add_(d1), strides[:, None].expand(d, n))
    codes = wrapped[:d1]
    for r in range(1, d1):  # cumulative sum in place, then r + (d+1) (base - that)
        codes[r] += codes[r - 1]
    r = torch.arange(d1, dtype=dtype, device=rank.device)[:, None]
    return codes.neg_().add_(base).mul_(d1).add_(r)


def shifted_rows(rows: torch.Tensor, offset: int) -> torch.Tensor:
    """Lattice row numbers moved by `offset` (a lattice stacked after others), the absent row 0
    staying 0: one fused add of sign(rows) * offset."""
    return torch.add(rows, rows.sign(), alpha=offset)


@dataclass
class _Simplices:
    """One image's points on the lattice (`_simplex`), padded as densecrf's SSE blocks are;
    `real` marks the points that are not padding."""

    rounded: torch.Tensor
    rank: torch.Tensor
    bary: torch.Tensor
    real: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "_Simplices":
        n, d = features.shape
        pad = -n % SSE_BLOCK
        real = torch.ones(n + bool(pad), dtype=torch.bool, device=features.device)
        if pad:  # the padding points all sit at the origin: one is enough for the keys
            features = torch.cat([features, features.new_zeros(1, d)])
            real[n] = False
        return cls(*_simplex(features), real)


@dataclass
class _KeyLayout:
    """How (image, vertex) keys pack into one integer: the lowest coordinate `lo` per axis,
    leaving room for the vertices (rounded - 1) and their neighbour steps (+-1 more); the
    strides of the axes and of one image; `span`, the number of keys: int32 when they fit, else
    int64."""

    lo: torch.Tensor
    strides: list[int]
    stride: int
    span: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.int32 if self.span < 2**31 else torch.int64

    @classmethod
    def of(cls, simplices: list[_Simplices]) -> "_KeyLayout":
        d = simplices[0].rank.shape[0] - 1
        lo = torch.stack([p.rounded[:d].amin(1) for p in simplices]).amin(0).long() - 2
        hi = torch.stack([p.rounded[:d].amax(1) for p in simplices]).amax(0).long()
        radix = hi - lo + 2
        strides, stride = [], 1
        for k in reversed(range(d)):
            strides.insert(0, stride)
            stride *= int(radix[k])
        return cls(lo, strides, stride, (d + 1) * stride * len(simplices))


@dataclass
class Lattice:
    """A built lattice over P points and M lattice points (row 0 of every lattice array is an
    always-empty slot that absent neighbours point to).

    `vertices` (d+1, P): the lattice point of each point's vertex per remainder; `weights`
    (d+1, P): its barycentric weight; `neighbors` (d+1, M+1, 2): blur neighbours per axis (0 where
    absent); the splat as a sparse matrix (M+1, P): `splat_counts` (M+1,) entries per lattice
    point, then per entry its point `splat_col` and weight `splat_value`, sorted by lattice point
    and, within one, by point, the order densecrf accumulates them in."""

    vertices: torch.Tensor
    weights: torch.Tensor
    neighbors: torch.Tensor
    splat_counts: torch.Tensor
    splat_col: torch.Tensor
    splat_value: torch.Tensor
    alpha: float

    @property
    def size(self) -> int:
        """Rows of the lattice arrays: M lattice points plus the empty row 0."""
        return self.neighbors.shape[1]

    @classmethod
    def build(cls, features: list[torch.Tensor]) -> "Lattice":
        """One lattice for several point sets (one per image), each (N_b, d) float32; the sets
        never interact. Points come out in the order given, image after image.

        The images share one set of keys when those fit int32; otherwise each image is numbered
        alone and the lattices stacked (`stack`: the same lattice), as int64 keys sort, search
        and pack slower than each image's int32 ones (a CRF-RNN batch of noisy images)."""
        simplices = [_Simplices.of(f.float()) for f in features]
        layout = _KeyLayout.of(simplices)
        if len(simplices) > 1 and layout.dtype == torch.int64:
            return cls.stack([cls._from_simplices([one]) for one in simplices])
        return cls._from_simplices(simplices, layout)

    @classmethod
    def stack(cls, lattices: list["Lattice"]) -> "Lattice":
        """Lattices of different point sets as one: points and lattice points image after image,
        row 0 the one empty row; what `build` gives for the sets with shared keys."""
        first = lattices[0]
        all_rows = 1 + sum(lattice.size - 1 for lattice in lattices)
        all_points = sum(lattice.weights.shape[1] for lattice in lattices)
        index = torch.int32 if max(all_rows, all_points) < 2**31 else torch.int64
        vertices, neighbors, counts, cols = [], [], [first.splat_counts[:1]], []
        rows = points = 0  # before this lattice's, the empty row 0 aside
        for lattice in lattices:
            # every vertex is a lattice point (>= 1); an absent neighbour (0) stays 0
            vertices.append(lattice.vertices.to(index) + rows)
            n = lattice.neighbors[:, 1:].to(index)
            neighbors.append(shifted_rows(n, rows))
            counts.append(lattice.splat_counts[1:])
            cols.append(lattice.splat_col.to(index) + points)
            rows += lattice.size - 1
            points += lattice.weights.shape[1]
        empty = first.neighbors.new_zeros(first.neighbors.shape[0], 1, 2, dtype=index)
        return cls(
            vertices=torch.cat(vertices, 1),
            weights=torch.cat([lattice.weights for lattice in lattices], 1),
            neighbors=torch.cat([empty, *neighbors], 1),
            splat_counts=torch.cat(counts),
            splat_col=torch.cat(cols),
            splat_value=torch.cat([lattice.splat_value for lattice in lattices]),
            alpha=first.alpha,
        )

    @classmethod
    def _from_simplices(
        cls, simplices: list["_Simplices"], layout: "_KeyLayout | None" = None
    ) -> "Lattice":
        """The lattice of several images' simplices, with their keys packed together (`layout`:
        theirs, when already computed)."""
        d1 = simplices[0].rank.shape[0]
        d = d1 - 1
        device = simplices[0].rank.device
        rounded, rank, bary = (
            x[0] if len(x) == 1 else torch.cat(x, 1)
            for x in zip(*((p.rounded, p.rank, p.bary) for p in simplices), strict=True)
        )
        real = torch.cat([p.real for p in simplices])
        layout = layout or _KeyLayout.of(simplices)
        if layout.span >= 2**62:
            raise UserError(
                "CRF lattice keys overflow int64: a kernel's std (crf.*_std) is too small for "
                "this image size; use larger pos_xy_std / bi_xy_std / bi_rgb_std."
            )
        dtype, stride, strides = layout.dtype, layout.stride, layout.strides
        batch = torch.cat(
            [torch.full((p.rank.shape[1],), b * stride, dtype=dtype, device=device)
             for b, p in enumerate(simplices)]
        )  # fmt: skip
        strides_t = torch.tensor(strides, dtype=dtype, device=device)
        codes = _vertex_codes(rounded, rank, layout.lo.to(dtype), strides_t, batch)
        del batch

        # One stable sort numbers the lattice points (1..M, in code order) and gives the splat
        # order: the entries of one lattice point share a remainder, so they keep point order.
        # The (d+1, P) arrays dominate the memory (Cityscapes size: 12.6M entries), so each is
        # freed once used and the kept ones narrowed to int32 as soon as they exist.
        n = rank.shape[1]
        del rank, rounded
        sorted_codes, order = torch.sort(codes.reshape(-1), stable=True)
        del codes
        uniq, sorted_ids, counts = torch.unique_consecutive(
            sorted_codes, return_inverse=True, return_counts=True
        )
        del sorted_codes
        index = torch.int32 if max(uniq.numel() + 1, n) < 2**31 else torch.int64
        sorted_ids = sorted_ids.add_(1).to(index)
        vertices = torch.empty(order.shape, dtype=index, device=device)
        vertices = vertices.scatter_(0, order, sorted_ids).reshape(d1, -1)
        del sorted_ids
        value = bary.reshape(-1).index_select(0, order)
        col = order.remainder_(n).to(index)
        del order
        if bool(real.all()):
            splat_counts = torch.cat([counts.new_zeros(1), counts])
        else:  # drop the padding points' entries and renumber the points without them
            keep = real[col]
            col, value = (torch.cumsum(real, 0, dtype=index) - 1)[col[keep]], value[keep]
            vertices, bary = vertices[:, real], bary[:, real]
            splat_counts = torch.bincount(vertices.reshape(-1), minlength=uniq.numel() + 1)

        # Neighbours along axis j: every coordinate -1 except coordinate j +d (and the reverse):
        # r - 1 with q the same, or from r = 0 to r = d with q - 1; then q_j + 1. The lattice
        # points with remainder > 0 searched first, then those with remainder 0: each run of
        # targets is ascending, which makes the binary searches share their paths (faster).
        axis_step = d1 * torch.tensor(strides + [0], dtype=dtype, device=device)[:, None]
        m = uniq.numel()
        at_zero = uniq % d1 == 0
        runs = torch.cat([flat_nonzero(~at_zero), flat_nonzero(at_zero)])
        target = uniq.index_select(0, runs) + torch.where(
            at_zero.index_select(0, runs), axis_step + (d - d1 * sum(strides)), axis_step - 1
        )
        target = target.reshape(-1)
        pos = search_sorted(uniq, target).clamp_max_(m - 1)
        found = torch.where(uniq.index_select(0, pos) == target, pos + 1, 0).reshape(d1, -1)
        n1 = torch.empty(d1, m, dtype=index, device=device).index_copy_(1, runs, found.to(index))
        neighbors = torch.zeros(d1, m + 1, 2, dtype=index, device=device)
        neighbors[:, 1:, 0] = n1
        # The reverse step needs no search: y = n1(x) exactly when x = n2(y). Flat positions:
        # x is point (p + 1) on axis j, y its n1; neighbors[j, y, 1] sits at 2 ((m + 1) j + y) + 1.
        n1 = n1.reshape(-1)
        present = flat_nonzero(n1 != 0)
        axis = torch.div(present, m, rounding_mode="floor")
        slot = (axis * (m + 1) + n1.index_select(0, present)) * 2 + 1
        point = (present - axis * m + 1).to(index)
        neighbors.view(-1).index_copy_(0, slot, point)
        alpha = float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d)))
        return cls(
            vertices=vertices,
            weights=bary,
            neighbors=neighbors,
            splat_counts=splat_counts,
            splat_col=col,
            splat_value=value,
            alpha=alpha,
        )

    def blur(self, lattice: torch.Tensor) -> torch.Tensor:
        """In place along each of the d+1 axes in order: new = old + (n1 + n2) / 2."""
        for pairs in self.neighbors:  # row 0, the absent neighbour, has neighbours 0: stays zero
            lattice.add_(F.embedding_bag(pairs, lattice, mode="sum"), alpha=0.5)
        return lattice

    def filter_scalar(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter one value per point (P,) as densecrf's scalar routine does (used for
        <= 2 channels, i.e. the normalisation): alpha multiplies after the weight. The
        many-channel filter of the mean field is `meanfield.Filters`."""
        lattice = values.new_zeros(self.size, 1)
        lattice[:, 0].index_add_(0, self.vertices.reshape(-1), (self.weights * values).reshape(-1))
        lattice = self.blur(lattice)[:, 0]
        at_vertices = lattice.index_select(0, self.vertices.reshape(-1)).view_as(self.weights)
        return ((self.weights * at_vertices) * self.alpha).sum(0)
