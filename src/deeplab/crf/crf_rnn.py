"""CRF-RNN (Zheng et al., ICCV 2015): the dense CRF's mean field unrolled as a trainable layer.

The same CRF as the post-hoc `DenseCRF(backend="torch")` on raw scores (`kind="logits"`, unary
-score), on the same permutohedral lattices (`permutohedral.Lattice`, `meanfield.Filters`), with
the smoothness and appearance kernel weights and a C x C label compatibility learnable; the
kernel widths stay fixed, as in CRF-RNN. One iteration, per pixel i and label l:

    m_k = normalised K_k Q                      (message passing, per kernel k)
    scores(l) = logits(l) - sum_l' mu(l, l') sum_k w_k m_k(l')   (compatibility transform)
    Q = softmax(scores)

mu starts as Potts, mu(l, l') = [l != l']. densecrf adds +w_k m_k(l) instead; the two differ by
sum_l' w_k m_k(l'), the same for every label of a pixel, which the softmax ignores: untrained,
both give the same Q.

The lattices are built once per forward (the smoothness one is cached by image size) and serve
every iteration and the backward pass. A lattice filter is alpha S^T B_0 ... B_d S (splat S,
blur B_j along each axis, each symmetric), so its transpose is the same filter with the blur
axes in reverse order: the backward of a filtering is that filtering of the gradient, on the
same lattice, instead of autograd through every gather. Both kernels' weighted messages come
from one splat, blur and slice over the post-hoc CRF's stacked lattice array (the weights enter
per slice column), and autograd keeps two (P, C) maps per iteration, never a lattice-sized one.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from deeplab.crf.dense_crf import check_iterations, check_kernels
from deeplab.crf.meanfield import (
    Filters,
    Kernel,
    RowSums,
    bilateral_features,
    make_kernel,
    smoothness_kernel,
)
from deeplab.runtime.errors import UserError

# The CRF config fields a layer is built with and keeps fixed (its kernel widths); its weights
# and label compatibility are learnt (in its state dict), its iterations are the model's.
KERNEL_KEYS = ("pos_xy_std", "bi_xy_std", "bi_rgb_std", "normalization")

# "scalar": one weight per kernel (DeepLab's dense CRF); "matrix": a C x C matrix per kernel
# (the authors' CRF-RNN), starting at the scalar times the identity.
KERNEL_WEIGHTS = ("scalar", "matrix")


class KernelPair:
    """Both kernels' normalised filterings A_k on one stacked lattice array (`meanfield.Filters`).
    The kernel weights are not folded into it: they scale the slice columns at each call, in the
    values' dtype, so float64 gradients see them exactly.

    With the normalisation N_b before and N_a after (diagonal; N_b = 1 per-pixel) a kernel is
    A_k = N_a K N_b and its transpose N_b K^T N_a: the same splat and slice arrays with the two
    scales swapped and the blur axes reversed. The transposed slice is kept per kernel, so the
    backward gets each A_k^T g (for its weight's gradient) from one splat and blur."""

    def __init__(self, smoothness: Kernel, appearance: Kernel, dtype: torch.dtype):
        self.kernels = (smoothness, appearance)  # Filters' column order: fewer dimensions first
        with record_function("crf.operator"):
            unit = Filters.build([Kernel(k.lattice, 1.0, k.before, k.after) for k in self.kernels])
        self.forward_filter = _as(unit, dtype)
        self.vertices = torch.tensor(
            [k.lattice.weights.shape[0] for k in self.kernels], device=unit.slice.index.device
        )
        self.transposed_parts = None  # built by the first backward: evaluation needs none

    def _build_transposed(self) -> None:
        f = self.forward_filter
        with record_function("crf.operator"):
            swapped = Filters.build(
                [Kernel(k.lattice, 1.0, k.after, k.before) for k in self.kernels], reverse=True
            )
        dtype = f.splat.weight.dtype
        spread = replace(  # shares the splat's index arrays, which are the same
            f,
            splat=replace(f.splat, weight=swapped.splat.weight.to(dtype)),
            blur=[step.to(dtype) for step in swapped.blur],
        )
        self.transposed_parts = spread, self._per_kernel(swapped.slice.to(dtype))

    def _per_kernel(self, whole: RowSums) -> list[RowSums]:
        """A slice over all kernels' vertices, cut into one slice per kernel."""
        ends = self.vertices.cumsum(0).tolist()
        return [
            RowSums(
                whole.index[:, start:end].contiguous(),
                None,
                whole.weight[:, start:end].contiguous(),
            )
            for start, end in zip([0, *ends[:-1]], ends, strict=True)
        ]

    def __call__(self, q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[k] A_k q for q (P, C), differentiable in q and `weights` (2,)."""
        return _Messages.apply(q, weights, self)

    def each(self, q: torch.Tensor) -> torch.Tensor:
        """[A_k q for each kernel k] stacked (2, P, C), differentiable in q."""
        return _EachKernel.apply(q, self)

    def forward_slices(self) -> list[RowSums]:
        """Each kernel's slice of the forward filter."""
        return self._per_kernel(self.forward_filter.slice)

    def transposed_sum(self, grads: torch.Tensor) -> torch.Tensor:
        """sum_k A_k^T grads[k] for grads (2, P, C): one splat and blur of the kernels' gradients
        side by side (2C channels), each kernel's slice reading its own C."""
        if self.transposed_parts is None:
            self._build_transposed()
        spread, slices = self.transposed_parts
        c = grads.shape[-1]
        lattice = spread.spread(torch.cat(list(grads), 1))
        with record_function("crf.slice"):
            return sum(
                part(lattice[:, k * c : (k + 1) * c].contiguous()) for k, part in enumerate(slices)
            )

    def transposed(self, grad: torch.Tensor) -> list[torch.Tensor]:
        """[A_k^T grad for each kernel k]."""
        if self.transposed_parts is None:
            self._build_transposed()
        spread, slices = self.transposed_parts
        lattice = spread.spread(grad)
        with record_function("crf.slice"):
            return [part(lattice) for part in slices]


class _Messages(torch.autograd.Function):
    """y = sum_k w_k A_k q on the shared lattice; the backward runs A_k^T on the same lattice
    (see the module docstring) instead of autograd through every gather, and keeps only q."""

    @staticmethod
    def forward(ctx, q, weights, kernels: KernelPair):
        ctx.kernels = kernels
        ctx.save_for_backward(q, weights)
        per_column = weights.repeat_interleave(kernels.vertices)
        f = kernels.forward_filter
        lattice = f.spread(q)
        with record_function("crf.slice"):
            return f.slice(lattice, f.slice.weight * per_column)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, weights = ctx.saved_tensors
        per_kernel = ctx.kernels.transposed(grad.contiguous())
        grad_q = per_kernel[0] * weights[0]
        for w, part in zip(weights[1:], per_kernel[1:], strict=True):
            grad_q += part * w
        grad_weights = torch.stack(
            [torch.vdot(part.reshape(-1), q.reshape(-1)) for part in per_kernel]
        )
        return grad_q, grad_weights, None


class _EachKernel(torch.autograd.Function):
    """[A_k q] per kernel from one splat and blur of q (the matrix weights need the kernels'
    messages apart); the backward is sum_k A_k^T g_k on the same lattice, as `_Messages`'s."""

    @staticmethod
    def forward(ctx, q, kernels: KernelPair):
        ctx.kernels = kernels
        lattice = kernels.forward_filter.spread(q)
        with record_function("crf.slice"):
            return torch.stack([part(lattice) for part in kernels.forward_slices()])

    @staticmethod
    @once_differentiable
    def backward(ctx, grads):
        return ctx.kernels.transposed_sum(grads.contiguous()), None


def _as(filters: Filters, dtype: torch.dtype) -> Filters:
    """`filters` with its weights in `dtype` (embedding_bag wants them in the values' dtype)."""
    return Filters(
        splat=filters.splat.to(dtype),
        blur=[step.to(dtype) for step in filters.blur],
        slice=filters.slice.to(dtype),
    )


class CRFRNN(nn.Module):
    """Dense CRF mean field as a layer: forward(logits (B, C, H, W), images (B, 3, H, W) RGB
    0-255) -> scores (B, C, H, W), the last iteration's pre-softmax scores (their argmax is its
    labels).

    Learnable: `pos_w`, `bi_w` (the smoothness and appearance kernel weights: scalars, or with
    `kernel_weights="matrix"` C x C matrices starting at w I, the authors' parameterisation),
    `compatibility` (C x C, Potts at the start) and, with `output_scale`, a positive factor on the
    returned scores (1 at the start; it leaves their argmax as it is). Fixed: the kernel widths, the
    iteration counts (`iterations` in training, `test_iterations` in eval mode, as dropout switches;
    None: the same) and the normalisation ("per_pixel": 1 / (K 1) after filtering, DeepLab's;
    "symmetric": 1 / sqrt(K 1) before and after, pydensecrf's default). Its kernel values obey the
    post-hoc CRF's rules (`dense_crf.check_kernels`): `conf/crf_rnn/on.yaml` takes them from the
    `crf` config. Computes in float32 (float64 when the scores are float64) with autocast off, so it
    is safe inside bf16 / fp16 autocast; the images are not differentiated."""

    def __init__(
        self,
        num_classes: int,
        iterations: int = 5,
        pos_w: float = 3.0,
        pos_xy_std: float = 3.0,
        bi_w: float = 4.0,
        bi_xy_std: float = 49.0,
        bi_rgb_std: float = 5.0,
        normalization: str = "per_pixel",
        test_iterations: int | None = None,
        kernel_weights: str = "scalar",
        output_scale: bool = False,
        learn_compatibility: bool = True,
    ):
        super().__init__()
        if kernel_weights not in KERNEL_WEIGHTS:
            raise UserError(
                f"crf_rnn.kernel_weights={kernel_weights!r} is invalid: choose one of "
                f"{', '.join(KERNEL_WEIGHTS)}, e.g. crf_rnn.kernel_weights=matrix"
            )
        for key, value in (
            ("output_scale", output_scale),
            ("learn_compatibility", learn_compatibility),
        ):
            if not isinstance(value, bool):
                raise UserError(
                    f"crf_rnn.{key}={value!r} is invalid: use true or false, e.g. "
                    f"crf_rnn.{key}=true"
                )
        if num_classes < 2:
            raise ValueError(f"CRFRNN num_classes={num_classes} must be >= 2")
        check_iterations(iterations, "crf_rnn.iterations", 5)
        if test_iterations is not None:
            check_iterations(test_iterations, "crf_rnn.test_iterations", 10)
        check_kernels(pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization)
        self.num_classes, self.iterations = int(num_classes), int(iterations)
        self.test_iterations = self.iterations if test_iterations is None else int(test_iterations)
        self.pos_xy_std, self.bi_xy_std, self.bi_rgb_std = (
            float(pos_xy_std),
            float(bi_xy_std),
            float(bi_rgb_std),
        )
        self.normalization = normalization
        self.kernel_weights = kernel_weights
        unit = torch.eye(num_classes) if kernel_weights == "matrix" else torch.tensor(1.0)
        self.pos_w = nn.Parameter(float(pos_w) * unit)
        self.bi_w = nn.Parameter(float(bi_w) * unit)
        potts = 1.0 - torch.eye(num_classes)
        if learn_compatibility:
            self.compatibility = nn.Parameter(potts)
        else:  # kept Potts, still in the state dict under the same key
            self.register_buffer("compatibility", potts)
        # log of a positive factor on the returned scores: their argmax is the same whatever it
        # is, so it only calibrates the probabilities, and cross-entropy need not weaken the CRF
        # to make them less confident (docs/crf-rnn.md, Measured).
        self.log_output_scale = nn.Parameter(torch.zeros(())) if output_scale else None

    @classmethod
    def from_dense_crf(
        cls, crf, num_classes: int, iterations: int | None = None, kernel_weights: str = "scalar"
    ) -> "CRFRNN":
        """The layer with a post-hoc `DenseCRF`'s kernels and normalisation (its iterations
        unless given): untrained, the same CRF on raw scores."""
        params = dict(crf.params)
        if iterations is not None:
            params["iterations"] = iterations
        return cls(num_classes, **params, kernel_weights=kernel_weights)

    @property
    def steps(self) -> int:
        """The mean-field iterations of this mode: `iterations` training, else `test_iterations`."""
        return self.iterations if self.training else self.test_iterations

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, iterations={self.iterations}, "
            f"test_iterations={self.test_iterations}, "
            f"pos_xy_std={self.pos_xy_std}, bi_xy_std={self.bi_xy_std}, "
            f"bi_rgb_std={self.bi_rgb_std}, normalization={self.normalization!r}, "
            f"kernel_weights={self.kernel_weights!r}, "
            f"output_scale={self.log_output_scale is not None}, "
            f"learn_compatibility={isinstance(self.compatibility, nn.Parameter)}"
        )

    def forward(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        self._check(logits, images)
        with torch.autocast(logits.device.type, enabled=False):
            dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            if not self.steps:
                return logits.to(dtype)
            b, c, h, w = logits.shape
            neg_unary = logits.to(dtype).permute(0, 2, 3, 1).reshape(-1, c)  # labels last
            kernels = self._kernels(images, dtype)
            weights = torch.stack([self.pos_w, self.bi_w]).to(dtype)
            compatibility_t = self.compatibility.to(dtype).T
            q = _label_softmax(neg_unary)
            for _ in range(self.steps):
                if weights.ndim == 1:
                    messages = kernels(q, weights)
                else:  # sum_k m_k W_k^T: label l's message mixes kernel k's messages of all l'
                    messages = (kernels.each(q) @ weights.transpose(1, 2)).sum(0)
                scores = torch.addmm(neg_unary, messages, compatibility_t, alpha=-1)
                q = _label_softmax(scores)
            if self.log_output_scale is not None:
                scores = scores * self.log_output_scale.to(dtype).exp()
            return scores.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def _kernels(self, images: torch.Tensor, dtype) -> KernelPair:
        """The two kernels' lattices for this batch (one lattice set per image)."""
        b, _, h, w = images.shape
        with torch.no_grad():
            pixels = images.detach().permute(0, 2, 3, 1)
            features = [bilateral_features(x, self.bi_xy_std, self.bi_rgb_std) for x in pixels]
            appearance = make_kernel(features, 1.0, self.normalization)
            smoothness = smoothness_kernel(
                ((h, w),) * b, self.pos_xy_std, 1.0, self.normalization, images.device
            )
            return KernelPair(smoothness, appearance, dtype)

    def _check(self, logits: torch.Tensor, images: torch.Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"CRFRNN: logits must be (B, {self.num_classes}, H, W), got {tuple(logits.shape)}"
            )
        b, _, h, w = logits.shape
        if tuple(images.shape) != (b, 3, h, w):
            raise ValueError(
                f"CRFRNN: images must be (B, 3, H, W) = {(b, 3, h, w)} RGB 0-255 like the "
                f"logits {tuple(logits.shape)}, got {tuple(images.shape)}; upsample the scores "
                "to the image size first"
            )
        if images.device != logits.device:
            raise ValueError(f"CRFRNN: images on {images.device}, logits on {logits.device}")


SHORT_LABEL_DIM = 16  # one AVX-512 vector of float32


def _label_softmax(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the labels of (P, C) scores. Torch's CPU softmax vectorises along the label
    dim: with fewer labels than one vector it runs ~5x slower (7 labels, forward and backward)
    than along the pixels of the transposed view, with 21 labels ~2x faster."""
    if scores.shape[1] < SHORT_LABEL_DIM:
        return _LabelSoftmax.apply(scores)
    return torch.softmax(scores, 1)


class _LabelSoftmax(torch.autograd.Function):
    """softmax over the labels of (P, C) scores along the pixels of the transposed view
    (the values agree with `torch.softmax(scores, 1)` to rounding), contiguous; its backward,
    q * (g - sum(g q)), keeps only the output, the same map the filtering keeps."""

    @staticmethod
    def forward(ctx, scores):
        q = torch.softmax(scores.T, 0).T.contiguous()
        ctx.save_for_backward(q)
        return q

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        grad_q = grad * q
        row_sums = grad_q @ q.new_ones(q.shape[1], 1)  # a matrix product beats sum(1) here
        return grad_q.sub_(q * row_sums)


class WithCRFRNN(nn.Module):
    """A segmentation network followed by a CRF-RNN layer (`crf_rnn=on`): normalised images
    (B, 3, H, W) -> CRF-RNN scores (B, C, H, W) at the input size.

    The network's logits (MSC in training: the fused output, its first) are upsampled bilinearly
    to the input size (half-pixel centres, as the evaluation upsamples them) and refined with the
    input as RGB 0-255 (`x * std + mean`). `net` is the network itself, so that its weights load
    from, and save as, the same keys under `net.`; the layer's parameters sit under `crf_rnn.`."""

    def __init__(self, net: nn.Module, crf_rnn: CRFRNN, mean, std):
        super().__init__()
        self.net, self.crf_rnn = net, crf_rnn
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.net.classifier_parameters()

    def crf_parameters(self) -> list[nn.Parameter]:
        """The layer's learnable parameters (their own optimizer group: no weight decay)."""
        return list(self.crf_rnn.parameters())

    def refine(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """CRF-RNN scores of `logits` (any size) on the normalised images `x`."""
        if tuple(logits.shape[-2:]) != tuple(x.shape[-2:]):
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.crf_rnn(logits, x.float() * self.std + self.mean)

    def scores_and_net_output(self, x: torch.Tensor):
        """(CRF-RNN scores at the input size, the network's own output): the training loss and
        the validation score use both."""
        own = self.net(x)
        return self.refine(own[0] if isinstance(own, list | tuple) else own, x), own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores_and_net_output(x)[0]


def checkpoint_holds_layer(state: dict) -> bool:
    """Whether a network state dict (`WithCRFRNN`'s keys) holds a CRF-RNN layer."""
    return any(key.startswith("crf_rnn.") for key in state)
