"""Mean-field inference of the fully connected CRF in PyTorch, step for step as pydensecrf does it.

Per kernel, densecrf filters Q with the lattice, scales by the normalisation (symmetric:
1/sqrt(K 1) before and after; per-pixel: 1/(K 1) after, DeepLab's original C++), and applies the
Potts compatibility as -w * (K Q). One iteration is Q <- softmax(-U - sum_k(-w_k K_k Q)); the
kernel's self-contribution is not removed, as in densecrf. Several images run as one batch: their
pixels are concatenated and each lattice keeps the images apart.
"""

from dataclasses import dataclass

import numpy as np
import torch

from deeplab.crf.permutohedral import Lattice

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip


@dataclass
class Kernel:
    """A lattice plus its weight and the normalisation applied before / after filtering."""

    lattice: Lattice
    weight: float
    before: torch.Tensor | None
    after: torch.Tensor | None

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """The pairwise term densecrf subtracts from the negative unary: -w * norm K norm Q."""
        x = q * self.before if self.before is not None else q
        x = self.lattice.filter(x)
        if self.after is not None:
            x = x * self.after
        return -self.weight * x


def make_kernel(features: list[torch.Tensor], weight: float, normalization: str) -> Kernel:
    """Build the lattice once and the normalisation from filtering a vector of ones."""
    lattice = Lattice.build(features)
    ones = features[0].new_ones(lattice.offsets.shape[0], 1)
    norm = lattice.filter(ones, single_channel_path=True).double()
    if normalization == "symmetric":
        scale = (1.0 / torch.sqrt(norm + 1e-20)).float()
        return Kernel(lattice, weight, scale, scale)
    scale = (1.0 / (norm + 1e-20)).float()
    return Kernel(lattice, weight, None, scale)


def position_features(height: int, width: int, std: float, device) -> torch.Tensor:
    """(H*W, 2) features x/std, y/std in float32, row-major like densecrf."""
    s = np.float32(std)
    x = torch.arange(width, dtype=torch.float32, device=device) / s
    y = torch.arange(height, dtype=torch.float32, device=device) / s
    return torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1).reshape(-1, 2)


def exp_normalize(x: torch.Tensor) -> torch.Tensor:
    """densecrf's expAndNormalize over the label axis (last)."""
    e = torch.exp(x - x.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


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
    gauss, bilateral, unary, sizes = [], [], [], []
    for image, p in zip(images, probs, strict=True):
        c, h, w = p.shape
        gauss.append(position_features(h, w, pos_xy_std, p.device))
        rgb = image.reshape(-1, 3).float() / np.float32(bi_rgb_std)
        bilateral.append(torch.cat([position_features(h, w, bi_xy_std, p.device), rgb], dim=1))
        scores = p.reshape(c, -1).T
        unary.append(-scores if kind == "logits" else -torch.log(scores.clamp(UNARY_CLIP, 1.0)))
        sizes.append(h * w)
    kernels = [
        make_kernel(gauss, float(np.float32(pos_w)), normalization),
        make_kernel(bilateral, float(np.float32(bi_w)), normalization),
    ]
    neg_unary = -torch.cat(unary)
    q = exp_normalize(neg_unary)
    for _ in range(iterations):
        energy = neg_unary
        for kernel in kernels:
            energy = energy - kernel.message(q)
        q = exp_normalize(energy)
    return [part.T.reshape(p.shape) for part, p in zip(torch.split(q, sizes), probs, strict=True)]
