"""Quantization-aware fine-tuning (QAT): train with INT8 rounding simulated, save fp32 weights.

Used by ``train/main.py --init-checkpoint CKPT --qat``: the model starts from a trained
checkpoint and every forward pass (training and validation) sees what INT8 deployment does to
it, so the weights learn to tolerate it::

    python train/main.py --model passd_mobilenet ... --init-checkpoint runs/p/best --qat \\
        --epochs 1 --optimizer adamw --lr 1e-4 --out runs/p_qat
    python quantize/run.py --checkpoint runs/p_qat/best --target openvino --out runs/p_qat/ov

What is simulated is what every target quantizes: each conv / linear weight (and PASSD's P&A
offset-conv weight) rounded to INT8 per output channel (symmetric, 127 levels), and each
conv / linear input rounded per tensor to 8 bits (asymmetric over an exponential moving
average of the batch min / max), with straight-through gradients. Target-specific extras (ONNX
Runtime also rounds op outputs, TensorRT wants symmetric activations) are left to the target's
own calibration and to accuracy control, which run on the QAT weights as on any checkpoint.

Why this and not NNCF's or PT2E's QAT: those produce a quantized model in their own format,
while the targets quantize with their own tools (ONNX Runtime's QDQ, NNCF on the OpenVINO IR,
ai-edge-quantizer, TensorRT's rules). QAT here changes only the weights, so its checkpoint is
a plain safetensors + JSON checkpoint that every target converts, checks and ships exactly as
it would the original; the ranges are re-calibrated by the target on the QAT weights.
The simulation is no part of the checkpoint: nothing is added to the state dict. The
activation ranges are part of a run's resume state (``activation_ranges``), so a killed QAT
run continues exactly in one process. Under DDP each rank keeps ranges of its own batches
and only rank 0's are saved: a resume gives every rank those (close, not identical).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from train.checkpoint import CheckpointError

# Momentum of the activation ranges' moving average (per training batch).
RANGE_MOMENTUM = 0.9


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """``weight`` rounded to symmetric INT8 per output channel (axis 0), straight-through."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, -127, 127)


class ActivationRange:
    """Per-tensor 8-bit fake quantization of one layer's input, range by moving average."""

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None

    def observe(self, x: Tensor) -> None:
        low, high = float(x.detach().amin()), float(x.detach().amax())
        if self.low is None or self.high is None:
            self.low, self.high = low, high
        else:
            self.low = RANGE_MOMENTUM * self.low + (1 - RANGE_MOMENTUM) * low
            self.high = RANGE_MOMENTUM * self.high + (1 - RANGE_MOMENTUM) * high

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return inputs
        if module.training or self.low is None:
            self.observe(x)
        assert self.low is not None and self.high is not None
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / 255.0, 1e-12)
        zero_point = round(-low / scale)
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255),
                *inputs[1:])


def _weighted_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules whose ``weight`` INT8 deployment quantizes: convs, linears and any module with
    a 4-D ``weight`` (PASSD's P&A offset conv, exported as a projection MatMul)."""
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if isinstance(module, nn.Conv2d | nn.Linear | nn.ConvTranspose2d) or (
                isinstance(weight, nn.Parameter) and weight.dim() == 4):
            yield name, module


@contextmanager
def _rounded_weights(modules: list[nn.Module]) -> Iterator[None]:
    """Each module's ``weight`` Parameter replaced by its fake-quantized value for the
    duration (gradients reach the Parameter through the straight-through rounding)."""
    saved = []
    try:
        for module in modules:
            order = list(module._parameters)
            parameter = module._parameters.pop("weight")
            saved.append((module, order, parameter))
            object.__setattr__(module, "weight", fake_quantize_weight(parameter))
    except BaseException:
        _restore(saved)
        raise
    try:
        yield
    finally:
        _restore(saved)


def _restore(saved: list[tuple[nn.Module, list[str], nn.Parameter]]) -> None:
    for module, order, parameter in saved:
        object.__delattr__(module, "weight")
        others = dict(module._parameters)
        module._parameters.clear()
        for key in order:  # the original order: state-dict keys stay as they were
            module._parameters[key] = parameter if key == "weight" else others[key]


def enable_qat(model: nn.Module) -> int:
    """Make every forward of ``model`` simulate INT8 (see the module docstring); returns how
    many weight layers are simulated. The state dict is unchanged."""
    modules = [m for _, m in _weighted_modules(model)]
    if not modules:
        raise ValueError("QAT: the model has no conv or linear layer to quantize")
    for module in modules:
        if isinstance(module, nn.Conv2d | nn.Linear | nn.ConvTranspose2d):
            module.register_forward_pre_hook(ActivationRange())
    forward = model.forward

    def forward_with_int8(self: nn.Module, *args: object, **kwargs: object) -> object:
        with _rounded_weights(modules):
            return forward(*args, **kwargs)

    model.forward = types.MethodType(forward_with_int8, model)  # type: ignore[method-assign]
    model.qat_enabled = True  # type: ignore[assignment]
    return len(modules)


def _range_hooks(model: nn.Module) -> dict[str, ActivationRange]:
    return {name: hook for name, module in model.named_modules()
            for hook in module._forward_pre_hooks.values() if isinstance(hook, ActivationRange)}


def activation_ranges(model: nn.Module) -> dict[str, list[float] | None]:
    """Each simulated layer's moving input range, by module name (None before its first batch);
    empty for a model without QAT. JSON-ready: floats survive a JSON round trip exactly."""
    return {name: None if hook.low is None or hook.high is None else [hook.low, hook.high]
            for name, hook in _range_hooks(model).items()}


def restore_activation_ranges(model: nn.Module, ranges: dict[str, list[float] | None]) -> None:
    """Put back what ``activation_ranges`` returned (a resume).

    Raises:
        CheckpointError: the state is a QAT run's and the model simulates nothing (or other
            layers).
    """
    hooks = _range_hooks(model)
    if not ranges:
        if hooks:
            warnings.warn("the resume state holds no QAT activation ranges (the run trained "
                          "without --qat, or before they were saved): they start again from "
                          "the next batch", stacklevel=2)
        return
    if not hooks:
        raise CheckpointError("--resume: the run trained with --qat; resume it with --qat")
    if set(hooks) != set(ranges):
        raise CheckpointError("--resume: the state's QAT layers are not this model's")
    for name, hook in hooks.items():
        saved = ranges[name]
        hook.low, hook.high = (None, None) if saved is None else (float(saved[0]),
                                                                  float(saved[1]))
