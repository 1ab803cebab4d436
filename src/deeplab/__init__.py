"""DeepLab v2 (Chen et al., TPAMI 2017) in PyTorch Lightning + Hydra.

Importing any part of the package registers the OmegaConf resolver that gives `data=folder` its
class count (`deeplab.data.class_list`), so a config composed by any caller resolves
(design.md I3: `hydra.utils.instantiate(cfg.model)` with every data set).

It also asks PyTorch's CPU allocator for transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`, unless
the caller set the variable): arrays of 2 MB and more are then backed by 2-MB pages. The dense
CRF's splat, blur and slice gather rows at random from ~16-MB arrays, and with 4-KB pages most
of those reads also miss the TLB (docs/crf.md, Speed). Set THP_MEM_ALLOC_ENABLE=0 to opt out; it
takes effect only if torch has not yet allocated a large CPU array in the process."""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import deeplab.data.class_list  # noqa: E402, F401
