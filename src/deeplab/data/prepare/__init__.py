"""`python -m deeplab.data.prepare {voc,sbd,context,person_part,cityscapes} --root data/`."""
