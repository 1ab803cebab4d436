"""Convert the authors' released Caffe models (`.caffemodel`) into this project's state dicts."""
