"""The kernels on either side of the model: ONNX Runtime's input normalisation (with OpenCV's
area shrink to half size in the same pass) and the mapping of the detections back to frame
pixels."""

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


@compiled(nogil=True)
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
    table_0, table_1, table_2 = tables[0], tables[1], tables[2]
    source_0, source_1, source_2 = sources[0], sources[1], sources[2]
    # Pixel by pixel, the three planes at once: the image is read once (0.22-0.24 -> 0.20-0.21
    # ms for PASSD's and DAIPNet's inputs with the caches cold after an inference, against a
    # loop per plane).
    for y in range(height):
        row = image[y]
        for x in range(width):
            pixel = row[x]
            out[0, 0, y, x] = table_0[pixel[source_0]]
            out[0, 1, y, x] = table_1[pixel[source_1]]
            out[0, 2, y, x] = table_2[pixel[source_2]]
    return out


@compiled(nogil=True)
def halve_to_nchw(frame, tables, sources, height, width, top, left,
                  pad_level):  # type: ignore[no-untyped-def]
    """``preprocess.preprocess`` of a frame that shrinks by area to half its size, in one
    pass: each shrunk pixel computed as OpenCV's ``INTER_AREA`` computes 2 x 2 blocks of
    uint8 (``resizeAreaFast``: ``(sum + 2) >> 2``, half up), read from the channel tables
    (``table_to_nchw``) and written into the letterboxed input.

    Args:
        frame: ``(2 * h, 2 * w, 3)`` uint8, C-contiguous: shrinks to ``(h, w)``.
        tables, sources: as ``table_to_nchw``'s.
        height, width: the input size; the shrunk frame sits at row ``top``, column
            ``left``, the rest is ``pad_level`` (a uint8 level) through the tables.

    Returns:
        ``(1, 3, height, width)`` float32.
    """
    shrunk_h, shrunk_w = frame.shape[0] // 2, frame.shape[1] // 2
    out = np.empty((1, 3, height, width), np.float32)
    table_0, table_1, table_2 = tables[0], tables[1], tables[2]
    source_0, source_1, source_2 = sources[0], sources[1], sources[2]
    for y in range(height):
        row = y - top
        for channel in range(3):
            pad = tables[channel, pad_level]
            if not 0 <= row < shrunk_h:
                out[0, channel, y, :] = pad
            else:
                out[0, channel, y, :left] = pad
                out[0, channel, y, left + shrunk_w:] = pad
        if not 0 <= row < shrunk_h:
            continue
        upper, lower = frame[2 * row], frame[2 * row + 1]
        for x in range(shrunk_w):
            a, b, c, d = upper[2 * x], upper[2 * x + 1], lower[2 * x], lower[2 * x + 1]
            levels = ((np.int32(a[0]) + b[0] + c[0] + d[0] + 2) >> 2,
                      (np.int32(a[1]) + b[1] + c[1] + d[1] + 2) >> 2,
                      (np.int32(a[2]) + b[2] + c[2] + d[2] + 2) >> 2)
            out[0, 0, y, left + x] = table_0[levels[source_0]]
            out[0, 1, y, left + x] = table_1[levels[source_1]]
            out[0, 2, y, left + x] = table_2[levels[source_2]]
    return out
