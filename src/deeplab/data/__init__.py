"""Data sets behind design.md I4: LightningDataModules (`datamodule`) over one shared VOC-layout
reader (`dataset`), the augmentation (`transforms`) and the normalization pair (`normalization`).
Nothing is imported here, so that inference code needs no augmentation library."""
