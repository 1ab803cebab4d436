"""Mean-field inference of the fully connected CRF in PyTorch, step for step as pydensecrf does it.

Per kernel, densecrf filters Q with the lattice, scales by the normalisation (symmetric:
1/sqrt(K 1) before and after; per-pixel: 1/(K 1) after, DeepLab's original C++), and applies the
Potts compatibility as -w * (K Q). One iteration is Q <- softmax(-U - sum_k(-w_k K_k Q)); the
kernel's self-contribution is not removed, as in densecrf. Several images run as one batch: their
pixels are concatenated and each lattice keeps the images apart.

For speed the lattices are built once per call and every per-pixel factor (normalisation,
alpha, weight) is folded into two sparse matrices that serve all kernels at once (`Filters`), so
an iteration is one splat product, the blurs, one slice product added to -U, and a softmax. The
sums run in another order than densecrf's, so results agree to float rounding (~1e-7).
"""

from dataclasses import dataclass

import numpy as np
import torch

from deeplab.crf.permutohedral import Lattice, _crow, _csr

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip


@dataclass
class Kernel:
    """A lattice plus its weight and the normalisation applied before / after filtering."""

    lattice: Lattice
    weight: float
    before: torch.Tensor | None
    after: torch.Tensor | None


def make_kernel(features: list[torch.Tensor], weight: float, normalization: str) -> Kernel:
    """Build the lattice once and the normalisation from filtering a vector of ones."""
    lattice = Lattice.build(features)
    norm = lattice.filter_scalar(features[0].new_ones(lattice.offsets.shape[0])).double()
    if normalization == "symmetric":
        scale = (1.0 / torch.sqrt(norm + 1e-20)).float()
        return Kernel(lattice, weight, scale, scale)
    scale = (1.0 / (norm + 1e-20)).float()
    return Kernel(lattice, weight, None, scale)


@dataclass
class Filters:
    """All kernels as one operator over a stacked lattice array: row 0 is the shared empty row,
    then each kernel's lattice points. `splat` (R, P) and `slice` (P, R) are CSR matrices with
    the normalisation, alpha and weight folded in; `blur_steps` (first row, neighbour rows
    (2 n,)) blur the rows from `first row` on along one axis, the kernels that have that axis
    (lower-dimensional kernels come first, so those rows are contiguous)."""

    splat: torch.Tensor
    slice: torch.Tensor
    blur_steps: list[tuple[int, torch.Tensor]]

    @classmethod
    def build(cls, kernels: list[Kernel]) -> "Filters":
        kernels = sorted(kernels, key=lambda k: k.lattice.weights.shape[1])
        points = kernels[0].lattice.offsets.shape[0]
        bases, rows = [], 1
        for k in kernels:
            bases.append(rows - 1)  # local row r >= 1 -> base + r; local 0 (absent) -> 0
            rows += k.lattice.size - 1

        def rows_of(local: torch.Tensor, base: int) -> torch.Tensor:
            return torch.where(local > 0, local + base, 0)

        counts, cols, values = [kernels[0].lattice.splat_counts.new_zeros(1)], [], []
        for k in kernels:
            c, col, value = k.lattice.splat(k.before)
            counts.append(c[1:])
            cols.append(col)
            values.append(value)
        splat = _csr(_crow(torch.cat(counts)), torch.cat(cols), torch.cat(values), (rows, points))

        slice_cols, slice_values = [], []
        for k, base in zip(kernels, bases, strict=True):
            w = k.lattice.weights * k.lattice.alpha  # densecrf's many-channel slice weight
            if k.after is not None:
                w = w * k.after[:, None]
            slice_cols.append(rows_of(k.lattice.offsets, base))
            slice_values.append(w * k.weight)
        cols = torch.cat(slice_cols, 1)
        per_point = cols.shape[1]
        crow = torch.arange(0, points * per_point + 1, per_point, device=cols.device)
        slice_ = _csr(
            crow, cols.reshape(-1), torch.cat(slice_values, 1).reshape(-1), (points, rows)
        )

        steps = []
        for axis in range(kernels[-1].lattice.weights.shape[1]):
            having = [(k, b) for k, b in zip(kernels, bases, strict=True)
                      if axis < k.lattice.weights.shape[1]]  # fmt: skip
            pairs = torch.cat([rows_of(k.lattice.neighbors[axis], b) for k, b in having], 1)
            steps.append((having[0][1] + 1, pairs.reshape(-1)))
        return cls(splat, slice_, steps)

    def blur(self, lattice: torch.Tensor, buffer: torch.Tensor) -> None:
        """In place, axis after axis: new = old + (n1 + n2) / 2 (one gather per axis)."""
        for first, pairs in self.blur_steps:
            n = pairs.numel() // 2
            side = torch.index_select(lattice, 0, pairs, out=buffer[: 2 * n])
            lattice[first : first + n].add_(side[:n].add_(side[n:]), alpha=0.5)


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
    bilateral, neg_unary, sizes = [], [], []
    for image, p in zip(images, probs, strict=True):
        c, h, w = p.shape
        rgb = image.reshape(-1, 3).float() / np.float32(bi_rgb_std)
        bilateral.append(torch.cat([position_features(h, w, bi_xy_std, p.device), rgb], dim=1))
        scores = p.reshape(c, -1).T
        neg_unary.append(scores if kind == "logits" else torch.log(scores.clamp(UNARY_CLIP, 1.0)))
        sizes.append(h * w)
    neg_unary = torch.cat(neg_unary)  # (P, C), labels last: each pixel's labels are contiguous
    q = torch.softmax(neg_unary, 1)
    if iterations:
        filters = Filters.build(
            [
                smoothness_kernel(
                    tuple(tuple(p.shape[1:]) for p in probs),
                    pos_xy_std,
                    float(np.float32(pos_w)),
                    normalization,
                    neg_unary.device,
                ),
                make_kernel(bilateral, float(np.float32(bi_w)), normalization),
            ]
        )
        longest = max(pairs.numel() for _, pairs in filters.blur_steps)
        buffer = q.new_empty(longest, q.shape[1])
        for _ in range(iterations):
            lattice = filters.splat @ q
            filters.blur(lattice, buffer)
            q = torch.softmax(torch.addmm(neg_unary, filters.slice, lattice), 1)
    return [part.T.reshape(p.shape) for part, p in zip(torch.split(q, sizes), probs, strict=True)]
