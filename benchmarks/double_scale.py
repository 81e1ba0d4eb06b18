"""HAR-Net's double-scale testing measured: ``python benchmarks/double_scale.py --checkpoint CKPT``

Exports the checkpoint's fp32 ONNX at its input size and at twice it, runs both in ONNX
Runtime on the synthetic eval split (the accuracy check's images: seed 1, 200 images), and
prints AP / AP50 / APs / APl and the p50 latency of single-scale testing next to double-scale
testing (``edgedet.double_scale``: the 2x run's maps averaged with the 1x run's at shared
resolutions, its finest level added), once as the SDK merges (the coarsest shared levels from
the 1x run alone, ``COARSE_LEVELS_FROM_1X``) and once as the paper does (every shared level
averaged), with the boxes over 80% of the frame scoring above the application threshold.
All decode through the SDK's ``HeadDecoder`` with the checkpoint's post-processing, so the
only differences are the second scale and the merge.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common.args import require_at_least, require_checkpoint
from edgedet.artifact import INPUT_NAME
from edgedet.backends.onnxruntime import session_options
from edgedet.data.evaluate import detections_to_coco_results, evaluate_coco, samples_to_coco_gt
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.decoder import HeadDecoder
from edgedet.double_scale import COARSE_LEVELS_FROM_1X, DoubleScaleLayout
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.options import DetectorOptions
from edgedet.preprocess import PreprocessConfig, preprocess
from quantize.export_onnx import export_onnx


def _session(path: Path, threads: int) -> ort.InferenceSession:
    # The SDK's options: the two scales' sessions take turns, and a session left spinning
    # after its run would slow the other's.
    return ort.InferenceSession(str(path), session_options(threads),
                                providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a RetinaNet-family checkpoint")
    parser.add_argument("--images", type=int, default=200, help="eval images (seed 1)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    require_at_least(parser, 1, threads=args.threads)
    require_checkpoint(parser, args.checkpoint)
    model, config = build_from_checkpoint(args.checkpoint)
    preprocess_1x = PreprocessConfig.from_dict(config["preprocess"])
    width, height = preprocess_1x.input_size
    preprocess_2x = PreprocessConfig.from_dict(
        {**config["preprocess"], "input_size": [2 * width, 2 * height]})
    layouts = {mode: DoubleScaleLayout.of(model.anchor_spec((width, height)),
                                          model.anchor_spec((2 * width, 2 * height)), coarse)
               for mode, coarse in (("double", COARSE_LEVELS_FROM_1X), ("paper", 0))}
    layout = layouts["double"]
    options = DetectorOptions.from_manifest(config, settings="evaluation")
    single = HeadDecoder.from_manifest(config, options)
    double = HeadDecoder(config["head_family"], layout.priors_cxcywh,
                         config["box_coder_weights"], single.output_names,
                         config["class_names"], options)
    size = tuple(config.get("synthetic_size") or (width, height))
    samples = list(SyntheticScenes(args.images, seed=1, config=SyntheticConfig(image_size=size)))
    with tempfile.TemporaryDirectory() as tmp:
        session_1x = _session(export_onnx(model, Path(tmp) / "1x.onnx", (width, height)),
                              args.threads)
        session_2x = _session(export_onnx(model, Path(tmp) / "2x.onnx",
                                          (2 * width, 2 * height)), args.threads)
        names = [o.name for o in session_1x.get_outputs()]
        results: dict[str, list] = {"single": [], "double": [], "paper": []}
        times: dict[str, list[float]] = {"single": [], "double": []}
        whole_frame = dict.fromkeys(results, 0)
        threshold = DetectorOptions.from_manifest(config).score_threshold
        for sample in samples:
            start = time.perf_counter()
            tensor, transform = preprocess(sample.image, preprocess_1x)
            out_1x = dict(zip(names, session_1x.run(None, {INPUT_NAME: tensor}), strict=True))
            found = {"single": single(out_1x, transform)}
            times["single"].append(time.perf_counter() - start)
            tensor_2x, _ = preprocess(sample.image, preprocess_2x)
            out_2x = dict(zip(names, session_2x.run(None, {INPUT_NAME: tensor_2x}), strict=True))
            found["double"] = double(layout.merge_outputs(out_1x, out_2x), transform)
            times["double"].append(time.perf_counter() - start)
            found["paper"] = double(layouts["paper"].merge_outputs(out_1x, out_2x), transform)
            frame_area = sample.image.shape[0] * sample.image.shape[1]
            for mode, dets in found.items():
                results[mode] += detections_to_coco_results(
                    sample.image_id, dets.xyxy, dets.scores, dets.class_ids)
                whole_frame[mode] += int(np.sum((dets.area > 0.8 * frame_area)
                                                & (dets.scores > threshold)))
    ground_truth = samples_to_coco_gt(samples, config["class_names"])
    print(f"{config['architecture']} at {width}x{height} (+ {2 * width}x{2 * height}), "
          f"{len(samples)} images, ONNX Runtime fp32, {args.threads} threads, "
          f"NMS {options.nms_mode}")
    print(f"{'testing':<8} {'AP':>6} {'AP50':>6} {'APs':>6} {'APl':>6} {'p50 ms':>7} "
          f"whole-frame boxes > {threshold:g}")
    for mode in ("single", "double", "paper"):
        m = evaluate_coco(ground_truth, results[mode])
        ms = 1000 * statistics.median(times["double" if mode == "paper" else mode])
        print(f"{mode:<8} {100 * m.AP:>6.2f} {100 * m.AP50:>6.2f} {100 * m.APs:>6.2f} "
              f"{100 * m.APl:>6.2f} {ms:>7.1f} {whole_frame[mode]} in {len(samples)} images")
    print(f"double: the SDK's merge ({COARSE_LEVELS_FROM_1X} coarsest shared levels from the 1x "
          "run); paper: every shared level averaged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
