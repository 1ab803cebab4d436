"""The normalization pair: `normalize` makes the network's input tensor, and its exact inverse
`denormalize` gives the CRF and the figures back the original RGB. Kept apart from the
augmentation so that inference needs neither albumentations nor OpenCV."""

from collections.abc import Sequence

import numpy as np
import torch


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) as (pixel - mean) / std, all on the 0-255 scale."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def denormalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float (3, H, W) -> uint8 RGB (H, W, 3); rounds, so it exactly inverts `normalize`."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = tensor.detach().cpu().float() * std_t + mean_t
    return rgb.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
