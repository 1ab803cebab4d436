"""DeepLab v2 (Chen et al., TPAMI 2017) in PyTorch Lightning + Hydra."""
