"""The kernels on either side of the model: ONNX Runtime's input normalisation and the
mapping of the detections back to frame pixels."""

from __future__ import annotations

import numpy as np

from edgedet.kernels._common import ZERO, compiled


@compiled()
def frame_detections(boxes_xyxy, scores, class_ids, scale_x, scale_y, pad_x, pad_y,
                     frame_width, frame_height):  # type: ignore[no-untyped-def]
    """``HeadDecoder``'s last step: input-pixel boxes to frame pixels, clipped to the frame
    (``FrameTransform.boxes_to_frame``, float32, ``np.clip``'s order: NaN stays NaN, -0 becomes
    0), and only the boxes left with a positive width and height (one wholly in letterbox
    padding or off the frame clips to zero area; a NaN box fails the test too).

    Args:
        boxes_xyxy: ``(D, 4)`` float32. scores: ``(D,)`` float32. class_ids: ``(D,)`` int64.
        scale_x, scale_y, pad_x, pad_y: the transform (``x_in = x * scale + pad``), floats.
        frame_width, frame_height: ints.

    Returns:
        ``(boxes_xyxy (N, 4) float32, scores (N,) float32, class_ids (N,) int64)``.
    """
    scale = (np.float32(scale_x), np.float32(scale_y))
    pad = (np.float32(pad_x), np.float32(pad_y))
    limit = (np.float32(frame_width), np.float32(frame_height))
    count = boxes_xyxy.shape[0]
    mapped = np.empty((count, 4), np.float32)
    visible = np.empty(count, np.bool_)
    kept = 0
    for i in range(count):
        for m in range(4):
            value = (boxes_xyxy[i, m] - pad[m % 2]) / scale[m % 2]
            if value == value:  # np.clip: max(value, 0) then min(., limit), NaN kept
                value = value if value > ZERO else ZERO
                value = value if value < limit[m % 2] else limit[m % 2]
            mapped[i, m] = value
        visible[i] = mapped[i, 2] > mapped[i, 0] and mapped[i, 3] > mapped[i, 1]
        kept += visible[i]
    out_boxes = np.empty((kept, 4), np.float32)
    out_scores = np.empty(kept, np.float32)
    out_classes = np.empty(kept, np.int64)
    row = 0
    for i in range(count):
        if visible[i]:
            out_boxes[row] = mapped[i]
            out_scores[row] = scores[i]
            out_classes[row] = class_ids[i]
            row += 1
    return out_boxes, out_scores, out_classes


@compiled()
def table_to_nchw(image, tables, sources):  # type: ignore[no-untyped-def]
    """``preprocess.normalize_to_nchw``: each pixel's channel value read from its 256-entry
    table (the float32 result of ``(v - mean) / std`` for every uint8 level ``v``).

    Args:
        image: ``(H, W, 3)`` uint8, C-contiguous. tables: ``(3, 256)`` float32, in the
            model's channel order. sources: ``(3,)`` int64, the image channel each model
            channel reads (BGR frames into an RGB model: 2, 1, 0).

    Returns:
        ``(1, 3, H, W)`` float32.
    """
    height, width, _ = image.shape
    out = np.empty((1, 3, height, width), np.float32)
    for channel in range(3):
        source = sources[channel]
        table = tables[channel]
        for y in range(height):
            for x in range(width):
                out[0, channel, y, x] = table[image[y, x, source]]
    return out
