"""Channel plans: how a structurally pruned model differs from its builder's network.

A pruned detector is its builder's network with narrower layers. Its checkpoint stores
``config["channel_plan"] = {state-dict key: shape}`` for every parameter and buffer whose shape
differs from the builder's, so ``build_from_checkpoint`` rebuilds it exactly: build the full
network, ``apply_channel_plan`` narrows the listed layers (empty tensors of the recorded
shapes, attributes such as ``out_channels`` updated), then strict ``load_state_dict`` fills in
the weights. No modules are pickled; the plan is plain JSON.

Only layers whose width is read from their tensors can be narrowed: convolutions (dense or
depthwise), deformable convolutions, linear layers, batch / group norm and HAR-Net's
cross-level group norm. Anything else with a recorded shape is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from edgedet.models.attention import CrossLevelGroupNorm
from edgedet.models.deform_conv import DeformConv2d

ChannelPlan = dict[str, list[int]]


class ChannelPlanError(ValueError):
    """A channel plan that does not fit the network it is applied to."""


def channel_plan_of(model: nn.Module, reference: nn.Module) -> ChannelPlan:
    """``{state-dict key: shape}`` of ``model``'s tensors whose shape differs from
    ``reference``'s (the unpruned network of the same builder and kwargs)."""
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    plan: ChannelPlan = {}
    for key, tensor in model.state_dict().items():
        if key not in reference_shapes:
            raise ChannelPlanError(f"{key} is not a tensor of the reference network")
        if tuple(tensor.shape) != reference_shapes[key]:
            plan[key] = [int(v) for v in tensor.shape]
    return plan


def _update_attributes(module: nn.Module, name: str) -> None:
    """Make ``module``'s width attributes agree with its (resized) tensors."""
    if isinstance(module, nn.Conv2d | DeformConv2d):
        out_channels, in_per_group = module.weight.shape[:2]
        if module.groups == 1:
            module.in_channels = in_per_group
        elif module.groups == module.in_channels == module.out_channels and in_per_group == 1:
            module.in_channels = module.groups = out_channels  # depthwise stays depthwise
        else:
            raise ChannelPlanError(f"{name}: grouped convolutions ({module.groups} groups) "
                                   "cannot be narrowed")
        module.out_channels = out_channels
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.weight.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
        if module.num_channels % module.num_groups:
            raise ChannelPlanError(f"{name}: {module.num_channels} channels do not form "
                                   f"{module.num_groups} groups")
    elif isinstance(module, CrossLevelGroupNorm):
        if module.weight.shape[0] % module.num_groups:
            raise ChannelPlanError(f"{name}: {module.weight.shape[0]} channels do not form "
                                   f"{module.num_groups} groups")
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        raise ChannelPlanError(f"{name}: a {type(module).__name__} cannot be narrowed by a "
                               "channel plan")


def apply_channel_plan(model: nn.Module, plan: Mapping[str, list[int]] | None) -> nn.Module:
    """Narrow ``model`` in place to the shapes in ``plan`` (None or empty: unchanged).

    The resized tensors are zero-filled; load the pruned weights afterwards. Raises
    ``ChannelPlanError`` naming the first key that is not a tensor of ``model`` or belongs to
    a layer that cannot be narrowed.
    """
    if not plan:
        return model
    modules = dict(model.named_modules())
    touched: dict[str, nn.Module] = {}
    for key, shape in plan.items():
        module_name, _, tensor_name = key.rpartition(".")
        module = modules.get(module_name)
        tensor = None if module is None else getattr(module, tensor_name, None)
        if not isinstance(tensor, torch.Tensor):
            raise ChannelPlanError(f"channel plan entry {key!r} is not a tensor of "
                                   f"{type(model).__name__}")
        resized = torch.zeros([int(v) for v in shape], dtype=tensor.dtype)
        if isinstance(tensor, nn.Parameter):
            setattr(module, tensor_name, nn.Parameter(resized, tensor.requires_grad))
        else:
            module.register_buffer(tensor_name, resized)
        touched[module_name] = module
    for name, module in touched.items():
        _update_attributes(module, name)
    return model


__all__ = ["ChannelPlan", "ChannelPlanError", "apply_channel_plan", "channel_plan_of"]
