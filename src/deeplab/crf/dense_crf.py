"""`DenseCRF`: the callable that `instantiate(cfg.crf)` returns (design.md I5).

Two backends share one set of parameters: `pydensecrf` (the C++ reference, CPU; an optional
package that needs a compiler) and `torch` (the same lattice and mean field in PyTorch, on CPU or
GPU, batched; matches the reference to float rounding). `auto`, the shipped configs' choice, picks
one per process (`default_backend`) and `DenseCRF.backend` then names the one that runs.
"""

import functools
import logging

import numpy as np
import torch

from deeplab.crf import pydensecrf_backend
from deeplab.crf.meanfield import mean_field
from deeplab.runtime.errors import UserError

BACKENDS = ("auto", "pydensecrf", "torch")
# What the class maps are: softmax probabilities (unary -log p, clipped at 1e-5 as pydensecrf's
# unary_from_softmax does) or raw scores / logits (unary -score, as DeepLab's dense_inference).
KINDS = ("probs", "logits")
PROBS_SUM_TOLERANCE = 1e-3  # float16 softmax outputs sum to 1 within ~1e-3
log = logging.getLogger(__name__)


def default_backend() -> str:
    """What `backend: auto` runs: torch on a GPU (the scores are on it) or where pydensecrf is not
    installed, else pydensecrf (the reference, whose results the CPU figures were measured with).
    """
    if torch.cuda.is_available() or not pydensecrf_backend.available():
        return "torch"
    return "pydensecrf"


def check_iterations(iterations, key: str, example: int) -> None:
    """A mean-field iteration count is an integer >= 0 (0: the scores as they are); `key` is the
    config key that set it (crf.iterations, crf_rnn.iterations)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise UserError(
            f"{key}={iterations!r} is invalid: it must be an integer >= 0, e.g. {key}={example}"
        )


def check_kernels(pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization) -> None:
    """The rules of the CRF's kernel values, one place for the post-hoc `DenseCRF` and the
    CRF-RNN layer, which takes them from the same `crf` config."""
    if normalization not in pydensecrf_backend.NORMALIZATIONS:
        raise UserError(
            f"crf.normalization={normalization!r} is invalid: it must be one of "
            f"{pydensecrf_backend.NORMALIZATIONS}, e.g. crf.normalization=per_pixel"
        )
    for name, value, low, example in (
        ("pos_w", pos_w, "weight >= 0", 3),
        ("bi_w", bi_w, "weight >= 0", 4),
        ("pos_xy_std", pos_xy_std, "deviation > 0", 3),
        ("bi_xy_std", bi_xy_std, "deviation > 0", 49),
        ("bi_rgb_std", bi_rgb_std, "deviation > 0", 5),
    ):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and value == value and (value >= 0 if "weight" in low else value > 0)
        if not ok:
            raise UserError(
                f"crf.{name}={value!r} is invalid: it must be a {low}, e.g. crf.{name}={example}"
            )


@functools.cache
def auto_backend() -> str:
    """`default_backend()`, logged once per process: which backend `auto` chose and why."""
    backend = default_backend()
    reason = (
        "a GPU is available" if torch.cuda.is_available()
        else "pydensecrf is not installed" if backend == "torch"
        else "pydensecrf is installed and no GPU is available"
    )  # fmt: skip
    log.info("crf.backend=auto runs the %s backend: %s", backend, reason)
    return backend


class DenseCRF:
    """Fully connected CRF with a Gaussian (smoothness) and a bilateral (appearance) kernel.

    crf(image uint8 (H, W, 3) RGB, probs float (C, H, W) softmax) -> refined probs, as the same
    type (numpy array or torch tensor), dtype and device as `probs`. Raw scores go in by name:
    crf(image, scores, kind="logits") takes unary = -score with no clip, exactly what DeepLab's
    released C++ reads (the per-pixel log-sum-exp that separates it from -log softmax cancels).
    """

    def __init__(
        self,
        iterations: int = 10,
        pos_w: float = 3.0,
        pos_xy_std: float = 3.0,
        bi_w: float = 4.0,
        bi_xy_std: float = 49.0,
        bi_rgb_std: float = 5.0,
        backend: str = "auto",
        normalization: str = "symmetric",
        device: str | None = None,
    ):
        # The rules of every CRF parameter live here; start-up validation builds the CRF.
        if backend not in BACKENDS:
            raise UserError(
                f"crf.backend={backend!r} is invalid: it must be one of {BACKENDS}, "
                "e.g. crf.backend=torch"
            )
        check_iterations(iterations, "crf.iterations", 10)
        check_kernels(pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization)
        # The one place the backend is decided: pydensecrf runs per image on the CPU, in worker
        # processes for whole splits; torch runs batches in this process, on CPU or GPU.
        backend = auto_backend() if backend == "auto" else backend
        self.in_worker_processes = backend == "pydensecrf"
        if self.in_worker_processes:
            pydensecrf_backend.require()
        self.iterations = int(iterations)
        self.pos_w, self.pos_xy_std = float(pos_w), float(pos_xy_std)
        self.bi_w, self.bi_xy_std, self.bi_rgb_std = (
            float(bi_w),
            float(bi_xy_std),
            float(bi_rgb_std),
        )
        self.backend, self.normalization = backend, normalization
        self.device = device  # where the torch backend computes numpy inputs (None: CUDA if any)

    @property
    def params(self) -> dict:
        return {
            "iterations": self.iterations,
            "pos_w": self.pos_w,
            "pos_xy_std": self.pos_xy_std,
            "bi_w": self.bi_w,
            "bi_xy_std": self.bi_xy_std,
            "bi_rgb_std": self.bi_rgb_std,
            "normalization": self.normalization,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"DenseCRF({args}, backend={self.backend!r})"

    def __call__(self, image, probs, kind: str = "probs"):
        return self.refine_batch([image], [probs], kind)[0]

    def refine_batch(self, images: list, probs: list, kind: str = "probs") -> list:
        """Refine several images; the torch backend runs them as one batch."""
        if len(images) != len(probs):
            raise ValueError(f"CRF got {len(images)} images but {len(probs)} probability maps")
        for i, (image, p) in enumerate(zip(images, probs, strict=True)):
            check_inputs(image, p, where=f"item {i}", kind=kind)
        if self.in_worker_processes:
            return [
                _like(
                    pydensecrf_backend.refine(_numpy_image(im), _numpy_probs(p), self.params, kind),
                    p,
                )
                for im, p in zip(images, probs, strict=True)
            ]
        device = self._torch_device(probs[0])
        with torch.no_grad():
            out = mean_field(
                [_tensor(im).to(device) for im in images],
                [_tensor(p).to(device=device, dtype=torch.float32) for p in probs],
                self.iterations,
                self.pos_w,
                self.pos_xy_std,
                self.bi_w,
                self.bi_xy_std,
                self.bi_rgb_std,
                self.normalization,
                kind,
            )
        return [_like(q, p) for q, p in zip(out, probs, strict=True)]

    def _torch_device(self, probs) -> torch.device:
        if isinstance(probs, torch.Tensor):
            return probs.device
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_inputs(image, probs, where: str = "input", kind: str = "probs") -> None:
    """Clear errors for the mistakes that would otherwise surface deep inside the C++ or lattice,
    or pass silently: NaN / inf spread through the whole image, and a map that is not a softmax
    (logits, or the wrong axis normalised) gives a meaningless unary."""
    if kind not in KINDS:
        raise UserError(f"CRF kind={kind!r}: choose one of {KINDS} (what the class maps hold)")
    for name, x in (("image", image), ("probs", probs)):
        if not isinstance(x, np.ndarray | torch.Tensor):
            raise TypeError(
                f"CRF {where}: {name} must be a numpy array or torch tensor, got {type(x)}"
            )
    if tuple(image.shape[2:]) != (3,) or image.ndim != 3:
        raise UserError(f"CRF {where}: image must be (H, W, 3) RGB, got shape {tuple(image.shape)}")
    if str(image.dtype) not in ("uint8", "torch.uint8"):
        raise UserError(
            f"CRF {where}: image must be uint8 RGB (0-255), got {image.dtype}; "
            "use deeplab.data.normalization.denormalize to undo the network's normalization"
        )
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise UserError(
            f"CRF {where}: {kind} must be (C, H, W) with C >= 2, got {tuple(probs.shape)}"
        )
    if tuple(probs.shape[1:]) != tuple(image.shape[:2]):
        raise UserError(
            f"CRF {where}: {kind} {tuple(probs.shape)} and image {tuple(image.shape)} differ "
            "in size; upsample the scores to the image size first"
        )
    floating = (
        probs.is_floating_point() if isinstance(probs, torch.Tensor) else probs.dtype.kind == "f"
    )
    if not floating:
        raise UserError(
            f"CRF {where}: {kind} must be floating-point (softmax outputs or logits), "
            f"got {probs.dtype}"
        )
    finite = torch.isfinite(probs) if isinstance(probs, torch.Tensor) else np.isfinite(probs)
    if not bool(finite.all()):
        raise UserError(
            f"CRF {where}: {kind} contain NaN or inf ({int((~finite).sum())} values); "
            "the network output is broken: check the checkpoint and the input image"
        )
    if kind == "logits":
        return
    sums = probs.sum(0, dtype=torch.float32 if isinstance(probs, torch.Tensor) else np.float32)
    if float(abs(sums - 1).max()) > PROBS_SUM_TOLERANCE or float(probs.min()) < 0:
        raise UserError(
            f"CRF {where}: probs must be softmax probabilities over the class axis (dim 0): "
            f"non-negative and summing to 1 within {PROBS_SUM_TOLERANCE}, but the sums are "
            f"{float(sums.min()):.4g}..{float(sums.max()):.4g} and the minimum is "
            f"{float(probs.min()):.4g}. Apply softmax over dim 0 first, or pass raw scores as "
            'crf(image, scores, kind="logits")'
        )


def _numpy_image(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(image)


def _numpy_probs(probs) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    return np.ascontiguousarray(probs, dtype=np.float32)


def _tensor(x) -> torch.Tensor:
    """Tensors pass through (staying on their device); arrays are made contiguous first."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _like(q, reference):
    """Return `q` as the type, dtype and device of `reference`."""
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(q).to(device=reference.device, dtype=reference.dtype)
    if isinstance(q, torch.Tensor):
        q = q.cpu().numpy()
    return q.astype(reference.dtype, copy=False)
