"""DSANet: RetinaNet with decoupled self-attention (Wu et al.; paper 002 in the seeds).

    ResNet -> FPN P3..P7 -> DSA: on P4-P7 a cls self-attention and a loc self-attention
    (``x + gamma * softmax(QK^T/sqrt(d)) V``, gamma initialised to 0), P3 unchanged
    -> RetinaNet head: cls tower on the cls features, box tower on the loc features.

Variants (builder switches): ``shared_attention=True`` is Table 2's DSANet(share) (one
self-attention per level feeding both towers); ``with_confidence=True`` is DSANet-Conf (an
``A``-channel object-confidence conv on the cls tower, output ``conf_logits [N, A, 1]``; the
NMS score ``sigmoid(cls) * sigmoid(conf)`` is post-processing, outside the model);
``use_dsa=False`` is the RetinaNet / RetinaNet-Conf baseline.
"""

from __future__ import annotations

from edgedet.models.attention import DecoupledSelfAttention
from edgedet.models.contract import model_config
from edgedet.models.fpn import RetinaFPN
from edgedet.models.retinanet import BACKBONE_BUILDERS, RetinaNet, image_size_pair
from edgedet.models.retinanet_head import RetinaNetHead

# Pyramid indices of P4..P7 in [P3, P4, P5, P6, P7]: self-attention on P3 ran out of GPU
# memory in the paper (Table 1), and its H*W x H*W attention matrix is the costly part.
DSA_LEVELS = (1, 2, 3, 4)


def _dsanet(
    architecture: str,
    backbone_name: str,
    num_classes: int,
    img_size: int | tuple[int, int],
    use_dsa: bool,
    shared_attention: bool,
    with_confidence: bool,
    channels: int = 256,
    head_convs: int = 4,
) -> RetinaNet:
    backbone = BACKBONE_BUILDERS[backbone_name]()
    fpn = RetinaFPN(backbone.out_channels[1:], channels)
    dsa = (DecoupledSelfAttention(channels, DSA_LEVELS, shared=shared_attention)
           if use_dsa else None)
    head = RetinaNetHead(channels, num_classes, feat_channels=channels, num_convs=head_convs,
                         with_confidence=with_confidence)
    config = model_config(architecture, {
        "num_classes": num_classes, "img_size": image_size_pair(img_size), "use_dsa": use_dsa,
        "shared_attention": shared_attention, "with_confidence": with_confidence,
    })
    return RetinaNet(backbone, fpn, head, config, pyramid_attention=dsa)


def dsanet_resnet18(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_dsa: bool = True,
    shared_attention: bool = False,
    with_confidence: bool = False,
) -> RetinaNet:
    """DSANet with a ResNet-18 trunk (small variant, not in the paper)."""
    return _dsanet("dsanet_resnet18", "resnet18", num_classes, img_size, use_dsa,
                   shared_attention, with_confidence)


def dsanet_resnet18_small(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (640, 384),
    use_dsa: bool = True,
    shared_attention: bool = False,
    with_confidence: bool = False,
) -> RetinaNet:
    """Edge configuration (not in the paper): ResNet-18, 128-channel FPN/head, 2 head convs.

    Cut like ``harnet_resnet18_small`` so the two RetinaNet-family edge models compare: the
    paper's 256-channel, 4-conv towers on five levels cost more than the ResNet-18 trunk at
    edge resolutions. The decoupled self-attention is unchanged (P4-P7, Q/K reduced 8x:
    16-dimensional queries and keys at 128 channels).
    """
    return _dsanet("dsanet_resnet18_small", "resnet18", num_classes, img_size, use_dsa,
                   shared_attention, with_confidence, channels=128, head_convs=2)


def dsanet_resnet50(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_dsa: bool = True,
    shared_attention: bool = False,
    with_confidence: bool = False,
) -> RetinaNet:
    """DSANet-ResNet-50-FPN (paper input 1000x600). See the module docstring for switches."""
    return _dsanet("dsanet_resnet50", "resnet50", num_classes, img_size, use_dsa,
                   shared_attention, with_confidence)


def dsanet_resnet101(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_dsa: bool = True,
    shared_attention: bool = False,
    with_confidence: bool = False,
) -> RetinaNet:
    """DSANet-ResNet-101-FPN (paper input 1000x600)."""
    return _dsanet("dsanet_resnet101", "resnet101", num_classes, img_size, use_dsa,
                   shared_attention, with_confidence)
