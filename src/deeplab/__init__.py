"""DeepLab v2 (Chen et al., TPAMI 2017) in PyTorch Lightning + Hydra.

Importing any part of the package registers the OmegaConf resolver that gives `data=folder` its
class count (`deeplab.data.class_list`), so a config composed by any caller resolves
(design.md I3: `hydra.utils.instantiate(cfg.model)` with every data set)."""

import deeplab.data.class_list  # noqa: F401
