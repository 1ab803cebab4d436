"""Mean-field inference of the fully connected CRF in PyTorch, step for step as pydensecrf does it.

Per kernel, densecrf filters Q with the lattice, scales by the normalisation (symmetric:
1/sqrt(K 1) before and after; per-pixel: 1/(K 1) after, DeepLab's original C++), and applies the
Potts compatibility as -w * (K Q). One iteration is Q <- softmax(-U - sum_k(-w_k K_k Q)); the
kernel's self-contribution is not removed, as in densecrf. Several images run as one batch: their
pixels are concatenated and each lattice keeps the images apart.

For speed the lattices are built once per call and every per-pixel factor (normalisation,
alpha, weight) is folded into the weights of one splat and one slice that serve all kernels at
once (`Filters`, weighted row sums by `embedding_bag`), so an iteration is one splat, a blur step
per two axes, one slice, and the softmax, taken as exp(messages) times softmax(-U) renormalised
(exp as exp2 of the messages in base 2). Sums run in another order than densecrf's (kernels
summed before the unary, two blur axes at once, products for sums of logarithms), so results
agree to float rounding (~1e-6).
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from deeplab.crf.fast_ops import flat_nonzero, transposed
from deeplab.crf.permutohedral import Lattice, shifted_rows

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip
LOG2_E, LN_2 = float(np.log2(np.e)), float(np.log(2.0))
CHUNK = 32768  # rows per mean-field step on the CPU for large arrays: 2.6 MB of 21 labels
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc: arrays above this are always freshly mapped pages


@dataclass
class Kernel:
    """A lattice plus its weight and the normalisation applied before / after filtering."""

    lattice: Lattice
    weight: float
    before: torch.Tensor | None
    after: torch.Tensor | None


def make_kernel(features: list[torch.Tensor], weight: float, normalization: str) -> Kernel:
    """Build the lattice once and the normalisation from filtering a vector of ones."""
    with record_function("crf.lattice"):
        lattice = Lattice.build(features)
    with record_function("crf.normalisation"):
        norm = lattice.filter_scalar(features[0].new_ones(lattice.weights.shape[1])).double()
    if normalization == "symmetric":
        scale = (1.0 / torch.sqrt(norm + 1e-20)).float()
        return Kernel(lattice, weight, scale, scale)
    scale = (1.0 / (norm + 1e-20)).float()
    return Kernel(lattice, weight, None, scale)


@dataclass
class RowSums:
    """Weighted row sums of a table, by `embedding_bag` (faster than a sparse matrix product on
    CPU, and the same sums in the same order): output row i sums the table rows
    `index[offsets[i]:offsets[i + 1]]` times `weight` (with `offsets` None, `index` and
    `weight` are (rows, bag size): fixed-size bags)."""

    index: torch.Tensor
    offsets: torch.Tensor | None
    weight: torch.Tensor

    def __call__(self, table: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The sums over `table` (its rows, C); `weight` replaces the stored weights."""
        weight = self.weight if weight is None else weight
        return F.embedding_bag(
            self.index, table, self.offsets, mode="sum", per_sample_weights=weight
        )

    def to(self, dtype: torch.dtype) -> "RowSums":
        """The same sums with the weights in `dtype` (embedding_bag wants the table's)."""
        return replace(self, weight=self.weight.to(dtype))

    def rows(self, start: int, stop: int) -> "RowSums":
        """The sums of output rows start..stop-1 only (views of the index and weights)."""
        if self.offsets is None:
            return replace(self, index=self.index[start:stop], weight=self.weight[start:stop])
        first = int(self.offsets[start])
        last = int(self.offsets[stop]) if stop < self.offsets.numel() else self.index.numel()
        part = slice(first, last)
        return RowSums(self.index[part], self.offsets[start:stop] - first, self.weight[part])

    def chunks(self, size: int) -> list[tuple[int, int, "RowSums"]]:
        """(start, stop, the sums of those rows) for runs of `size` output rows."""
        rows = self.index.shape[0] if self.offsets is None else self.offsets.numel()
        return [
            (start, min(start + size, rows), self.rows(start, min(start + size, rows)))
            for start in range(0, rows, size)
        ]


@dataclass
class Filters:
    """All kernels as one operator over a stacked lattice array: each kernel's lattice rows
    (its empty row 0, then its lattice points), lower-dimensional kernels first. `splat`:
    lattice row <- its points; `blur`, one step per axis: row <- itself plus half of each
    neighbour along the axis; `slice`: point <- its vertices in every kernel (P, vertices of
    all kernels). The normalisation, alpha and weights are folded into the splat and slice
    weights."""

    splat: RowSums
    blur: list[RowSums]
    slice: RowSums

    @classmethod
    def build(cls, kernels: list[Kernel], reverse: bool = False) -> "Filters":
        """`reverse`: blur along the axes in reverse order, as the transposed filter does."""
        kernels = sorted(kernels, key=lambda k: k.lattice.weights.shape[0])
        bases, rows = [], 0
        for k in kernels:  # each kernel keeps its empty row 0, at its base
            bases.append(rows)
            rows += k.lattice.size
        points = kernels[0].lattice.weights.shape[1]
        per_point = sum(k.lattice.weights.shape[0] for k in kernels)  # vertices, all kernels
        index = torch.int32 if max(rows, points * per_point) < 2**31 else torch.int64

        # Bag starts: an exclusive cumulative sum of the entries per row (empty rows have none).
        counts, cols, values = [kernels[0].lattice.splat_counts.new_zeros(1)], [], []
        for k in kernels:
            lattice, value = k.lattice, k.lattice.splat_value
            if k.before is not None:
                value = value * k.before.index_select(0, lattice.splat_col)
            counts.append(lattice.splat_counts)
            cols.append(lattice.splat_col)
            values.append(value)
        offsets = torch.cat(counts).cumsum(0, dtype=index)[:-1]
        splat = RowSums(torch.cat([c.to(index) for c in cols]), offsets, torch.cat(values))

        # The slice (P, vertices of all kernels), built vertex-major and transposed once.
        device = kernels[0].lattice.weights.device
        slice_index, slice_weight = [], []
        for k, base in zip(kernels, bases, strict=True):
            w = k.lattice.weights * k.lattice.alpha  # densecrf's many-channel slice weight
            if k.after is not None:
                w *= k.after
            slice_weight.append(w.mul_(k.weight))
            slice_index.append((k.lattice.vertices + base).to(index))  # never absent
        slice_index, slice_weight = (
            transposed(torch.cat(slice_index)),
            transposed(torch.cat(slice_weight)),
        )

        # Blur along each axis j in turn: row i <- i + (n1 + n2) / 2, n1 and n2 its neighbours
        # along j; absent ones (all of them for kernels without the axis) point to row 0, the
        # first kernel's empty row, which stays zero. Two axes make one step: row i sums the 9
        # rows two axis steps reach from it (weights 1/4, 1/2, 1), the same sums up to float
        # rounding in fewer passes over the lattice array (~15 % less time; three axes, 27
        # rows, take longer). The bags then leave out row 0 (about half their entries on VOC
        # images: the lattice is sparse), which adds only zeros.
        half = torch.tensor([0.5, 0.5, 1.0], device=device)
        self_rows = torch.arange(rows, dtype=index, device=device)[:, None]
        per_axis = []
        for axis in range(kernels[-1].lattice.weights.shape[0]):
            pairs = []
            for k, base in zip(kernels, bases, strict=True):
                if axis >= k.lattice.weights.shape[0]:
                    pairs.append(torch.zeros(k.lattice.size, 2, dtype=index, device=device))
                    continue
                n = k.lattice.neighbors[axis].to(index)
                pairs.append(shifted_rows(n, base))
            per_axis.append(torch.cat([torch.cat(pairs), self_rows], 1))
        if reverse:
            per_axis.reverse()
        blur = []
        for first in range(0, len(per_axis), 2):
            bags, weight = per_axis[first], half
            if first + 1 < len(per_axis):  # [i, (k, l)]: the l-th of the first step's bag of
                then = per_axis[first + 1]  # the k-th row of the second step's bag of i
                bags = bags.index_select(0, then.reshape(-1)).reshape(rows, -1)
                weight = (half[:, None] * half).reshape(-1)
            present = bags != 0
            counts = present.sum(1, dtype=index)
            offsets = torch.cumsum(counts, 0, dtype=index).sub_(counts)  # bag starts
            kept = flat_nonzero(present.reshape(-1))
            bags = bags.reshape(-1).index_select(0, kept)
            blur.append(RowSums(bags, offsets, weight.repeat(rows).index_select(0, kept)))
        return cls(splat=splat, blur=blur, slice=RowSums(slice_index, None, slice_weight))

    def spread(self, q: torch.Tensor) -> torch.Tensor:
        """The lattice array of q (P, C): splat, then blur."""
        with record_function("crf.splat"):
            lattice = self.splat(q)
        with record_function("crf.blur"):
            for step in self.blur:
                lattice = step(lattice)
        return lattice


def smoothness_kernel(
    sizes: tuple[tuple[int, int], ...], std: float, weight: float, normalization: str, device
) -> Kernel:
    """The position-only kernel depends on the image sizes alone, not on the image: build it
    once per (sizes, setting) and reuse it (VOC has two common sizes)."""
    key = (sizes, float(std), float(weight), normalization, str(device))
    if key not in _SMOOTHNESS_CACHE:
        if len(_SMOOTHNESS_CACHE) >= SMOOTHNESS_CACHE_SIZE:
            _SMOOTHNESS_CACHE.pop(next(iter(_SMOOTHNESS_CACHE)))  # the oldest
        features = [position_features(h, w, std, device) for h, w in sizes]
        _SMOOTHNESS_CACHE[key] = make_kernel(features, weight, normalization)
    return _SMOOTHNESS_CACHE[key]


SMOOTHNESS_CACHE_SIZE = 4  # a VOC-size lattice with its normalisation is ~15 MB
_SMOOTHNESS_CACHE: dict[tuple, Kernel] = {}


def position_features(height: int, width: int, std: float, device) -> torch.Tensor:
    """(H*W, 2) features x/std, y/std in float32, row-major like densecrf."""
    s = np.float32(std)
    x = torch.arange(width, dtype=torch.float32, device=device) / s
    y = torch.arange(height, dtype=torch.float32, device=device) / s
    return torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1).reshape(-1, 2)


def bilateral_features(image: torch.Tensor, xy_std: float, rgb_std: float) -> torch.Tensor:
    """image (H, W, 3) RGB 0-255 (uint8 or float) -> (H*W, 5) float32 features x/xy_std,
    y/xy_std, r/rgb_std, g/rgb_std, b/rgb_std, row-major like densecrf."""
    h, w, _ = image.shape
    rgb = image.reshape(-1, 3).float() / np.float32(rgb_std)
    return torch.cat([position_features(h, w, xy_std, image.device), rgb], dim=1)


def mean_field(
    images: list[torch.Tensor],
    probs: list[torch.Tensor],
    iterations: int,
    pos_w: float,
    pos_xy_std: float,
    bi_w: float,
    bi_xy_std: float,
    bi_rgb_std: float,
    normalization: str,
    kind: str = "probs",
) -> list[torch.Tensor]:
    """images: uint8 (H, W, 3); probs: float32 (C, H, W), all on one device. Returns probs.

    kind "probs": unary -log p clipped at UNARY_CLIP; "logits": unary -score (DeepLab's C++)."""
    bilateral, unary_softmax, sizes = [], [], []
    for image, p in zip(images, probs, strict=True):
        c, h, w = p.shape
        bilateral.append(bilateral_features(image, bi_xy_std, bi_rgb_std))
        scores = transposed(p.reshape(c, -1))  # (P, C): a copy, worked on in place
        if kind == "probs":  # softmax(log p) = p / sum(p); row sums as in `_iterate`
            scores = scores.clamp_(UNARY_CLIP, 1.0)
            unary_softmax.append(scores.div_(scores @ scores.new_ones(c, 1)))
        else:
            unary_softmax.append(torch.softmax(scores, 1))
        del scores
        sizes.append(h * w)
    # (P, C), labels last: each pixel's labels are contiguous
    q = unary_softmax[0] if len(unary_softmax) == 1 else torch.cat(unary_softmax)
    del unary_softmax
    if iterations:
        kernels = [
            smoothness_kernel(
                tuple(tuple(p.shape[1:]) for p in probs),
                pos_xy_std,
                float(np.float32(pos_w)),
                normalization,
                q.device,
            ),
            make_kernel(bilateral, float(np.float32(bi_w)), normalization),
        ]
        # The filters give the messages in base 2 (weights times log2(e)), for `_iterate`'s exp2.
        kernels = [replace(k, weight=k.weight * LOG2_E) for k in kernels]
        with record_function("crf.operator"):
            filters = Filters.build(kernels)
        del kernels
        q = _iterate(filters, q, iterations)
    return [part.T.reshape(p.shape) for part, p in zip(torch.split(q, sizes), probs, strict=True)]


def _iterate(filters: Filters, unary_softmax: torch.Tensor, iterations: int) -> torch.Tensor:
    """`iterations` mean-field steps from Q = softmax(-U): Q <- softmax(-U + messages), with
    `filters` giving the messages times log2(e).

    softmax(-U + m) is exp(m) softmax(-U) renormalised: an exp, a product and a row sum in place,
    cheaper than adding -U and a softmax over 21-long rows (whose row maxima cost as much as the
    exp); and exp(m) = exp2(m log2(e)), which torch computes about 3x faster on the CPU than exp
    (the same values to float rounding). The messages m are >= 0 (positive weights, values and
    filter), so each row sums to at least its largest softmax(-U) share, never 0; they are small
    (<= the weights' sum per-pixel, about 8 symmetric with the released ones), but weights
    large enough for exp(m) to overflow make a row sum inf or NaN, and those rows are redone
    as a softmax.

    On the CPU a step over an array above 32 MiB (Cityscapes size) runs CHUNK rows at a time
    into buffers kept across iterations (two lattice arrays, one Q): torch's CPU allocator
    caches nothing, and malloc maps such arrays afresh each time, so a fresh array per step
    page-faults, which there costs as much as the sums (`_page_faults`). The sums are the same
    either way; the softmax's vectorised passes may round the rows at a chunk's edge 1 ulp
    apart."""
    points, labels = unary_softmax.shape
    rows = filters.splat.offsets.numel()
    lattice_chunk, points_chunk = (
        CHUNK if _page_faults(n, labels, unary_softmax) else n for n in (rows, points)
    )
    splat, slices = filters.splat.chunks(lattice_chunk), filters.slice.chunks(points_chunk)
    blur = [step.chunks(lattice_chunk) for step in filters.blur]
    # Buffers only where steps run in chunks (one chunk, e.g. on a GPU: fresh arrays, in place).
    lattice_chunked, points_chunked = len(splat) > 1, len(slices) > 1
    buffers = [unary_softmax.new_empty(rows, labels) if lattice_chunked else None for _ in "ab"]
    out = torch.empty_like(unary_softmax) if points_chunked else None
    q, ones = unary_softmax, unary_softmax.new_ones(labels, 1)
    for _ in range(iterations):
        with record_function("crf.splat"):
            lattice = _sums(splat, q, buffers[0])  # q is spent here: its buffer takes the new Q
        with record_function("crf.blur"):
            for step in blur:
                lattice = _sums(step, lattice, buffers[lattice is buffers[0]])
        for start, stop, part in slices:
            with record_function("crf.slice"):
                x = part(lattice)
            with record_function("crf.softmax"):
                unary = unary_softmax[start:stop]
                target = x if out is None else out[start:stop]
                x = x.exp2_().mul_(unary)
                total = x @ ones  # row sums: a matrix product is twice as fast as sum(1) over 21
                if bool(torch.isfinite(total.sum())):  # not when a row sum is inf or NaN
                    torch.div(x, total, out=target)
                else:
                    messages = part(lattice).mul_(LN_2)
                    target.copy_(torch.softmax(messages.add_(torch.log(unary)), 1))
        q = target if out is None else out
    return q


def _page_faults(rows: int, labels: int, like: torch.Tensor) -> bool:
    """Whether a fresh (rows, labels) array would page-fault on every step: on the CPU, above
    glibc's largest mmap threshold (32 MiB), where malloc maps fresh pages for each array and
    returns them when it is freed. Below it freed arrays are reused, and one call per step
    beats chunks copied into a kept buffer (~11 % of the time on VOC images)."""
    return like.device.type == "cpu" and rows * labels * like.element_size() > MMAP_THRESHOLD_MAX


def _sums(parts: list[tuple[int, int, RowSums]], table: torch.Tensor, out: torch.Tensor | None):
    """The row sums chunk by chunk into `out` (one chunk: the sums as computed)."""
    if len(parts) == 1:
        return parts[0][2](table)
    for start, stop, part in parts:
        out[start:stop] = part(table)
    return out
