"""Every weight file read in one place: torchvision files, converted Caffe models, checkpoints,
each with the input convention it was trained with; networks built and initialised from them."""
