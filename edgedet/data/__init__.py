"""Datasets as numpy: the synthetic generator, COCO / VOC / YOLO readers, evaluation."""
