"""Convert a detector (or its ONNX export) to OpenVINO IR: ``model.xml`` + ``model.bin``.

``openvino.convert_model`` reads the ONNX graph of ``quantize.export_onnx`` (same rewrites,
same input and output names, static shapes); ``openvino.save_model`` writes the IR with fp32
weights (``compress_to_fp16=False``; fp16 compression is a separate choice, not a default).
Both files are written in a temporary directory beside the target and renamed into place,
``.bin`` first, so a reader never sees an ``.xml`` without its weights.

At run time OpenVINO's CPU plugin defaults to bf16 inference on CPUs that have it; pass
``{"INFERENCE_PRECISION_HINT": "f32"}`` to ``compile_model`` to run fp32.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from quantize.export_onnx import ExportError, export_onnx


def export_openvino(
    source: str | os.PathLike[str] | nn.Module,
    out_dir: str | os.PathLike[str],
    input_size: tuple[int, int] | None = None,
    name: str = "model",
    compress_to_fp16: bool = False,
    transform: Callable[[Any], object] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/{name}.xml`` and ``out_dir/{name}.bin``.

    Args:
        source: an ``.onnx`` file from ``export_onnx``, or a detector ``nn.Module`` (exported
            to ONNX first, in a temporary directory).
        out_dir: directory of the IR files (created if missing).
        input_size: ``(width, height)``; required when ``source`` is a module.
        name: file stem of the IR.
        compress_to_fp16: store weights as fp16 (False keeps fp32).
        transform: called with the converted ``openvino.Model`` before it is saved (it may
            change the model in place), e.g. ``quantize.openvino_embedding_bag``'s pass.

    Returns:
        ``(xml_path, bin_path)``.

    Raises:
        ExportError: the ONNX file is missing or OpenVINO cannot convert it.
    """
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        if isinstance(source, nn.Module):
            if input_size is None:
                raise ExportError("export_openvino needs input_size=(width, height) to export "
                                  "a module")
            onnx_path = export_onnx(source, Path(tmp) / "model.onnx", input_size)
        else:
            onnx_path = Path(source)
            if not onnx_path.is_file():
                raise ExportError(f"ONNX file not found: {onnx_path}")
        try:
            ov_model = ov.convert_model(str(onnx_path))
        except Exception as error:
            raise ExportError(f"OpenVINO could not convert {onnx_path}: {error}") from error
        if transform is not None:
            transform(ov_model)
        # (Saved before the exported ONNX file goes: OpenVINO may map its weights.)
        return save_ir(ov_model, out_dir, name, compress_to_fp16)


def save_ir(model: Any, out_dir: str | os.PathLike[str], name: str = "model",
            compress_to_fp16: bool = False) -> tuple[Path, Path]:
    """Write the ``openvino.Model`` ``model`` as ``out_dir/{name}.xml`` + ``.bin``, each
    written beside and renamed into place, the weights first (an old ``.xml`` removed
    before); returns both paths."""
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path, bin_path = out_dir / f"{name}.xml", out_dir / f"{name}.bin"
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        tmp_xml = Path(tmp) / f"{name}.xml"
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        # An old pair's .xml goes first: a run killed between the renames leaves a folder
        # without a model, never an old .xml over new weights.
        xml_path.unlink(missing_ok=True)
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)
        os.replace(tmp_xml, xml_path)
    return xml_path, bin_path
