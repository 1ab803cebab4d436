"""The reference backend: Krähenbühl's C++ through pydensecrf (package `pydensecrf2`).

Optional (`pip install -e .[pydensecrf]`): pydensecrf is a source package that needs a C++
compiler, and the torch backend needs none of it; `crf.backend: auto` runs torch where it is
missing, so a missing pydensecrf only matters when this backend is asked for by name. Kept free of
torch so that worker processes start quickly.
"""

import numpy as np

from deeplab.runtime.errors import UserError

try:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
except ImportError:
    dcrf = unary_from_softmax = None

INSTALL = "pip install pydensecrf2"  # in a checkout: pip install -e .[pydensecrf]
# symmetric: pydensecrf's default (Krähenbühl & Koltun, ICML 2013); per_pixel: 1 / (K 1) after
# filtering, the NIPS 2011 code DeepLab used.
NORMALIZATIONS = ("symmetric", "per_pixel")


def available() -> bool:
    return dcrf is not None


def require() -> None:
    """One message with the install command when the backend is asked for without the package."""
    if dcrf is None:
        raise UserError(
            "crf.backend=pydensecrf needs the pydensecrf package, which is not installed: "
            f"`{INSTALL}` (it compiles C++), or use crf.backend=torch (same results, CPU or GPU)"
        )


def refine(image: np.ndarray, probs: np.ndarray, params: dict, kind: str = "probs") -> np.ndarray:
    """image uint8 (H, W, 3), probs float32 (C, H, W) -> probs float32 (C, H, W).

    `params`: iterations, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization. The
    smoothness kernel is added before the appearance kernel, as in DeepLab's dense_inference.
    `kind`: "probs" (unary -log p, clipped at 1e-5) or "logits" (unary -score, DeepLab's)."""
    require()
    c, h, w = probs.shape
    norm = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "per_pixel": dcrf.NORMALIZE_AFTER}[
        params["normalization"]
    ]
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -probs.reshape(c, -1) if kind == "logits" else unary_from_softmax(probs)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params["pos_xy_std"], compat=params["pos_w"], normalization=norm)
    crf.addPairwiseBilateral(
        sxy=params["bi_xy_std"],
        srgb=params["bi_rgb_std"],
        rgbim=np.ascontiguousarray(image),
        compat=params["bi_w"],
        normalization=norm,
    )
    return np.asarray(crf.inference(params["iterations"]), dtype=np.float32).reshape(c, h, w)


def refine_star(args: tuple) -> np.ndarray:
    """`refine(*args)` for the process pool's map."""
    return refine(*args)
