import torch

from edgedet.models.passd_fpn import PassdFPN


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(1, 8, 10, 10), torch.randn(1, 16, 5, 5), torch.randn(1, 4, 3, 3)]


def test_shapes_and_parameter_layout():
    fpn = PassdFPN([8, 16, 4], out_channels=6)
    out = fpn(_inputs())
    assert [tuple(p.shape) for p in out] == [(1, 6, 10, 10), (1, 6, 5, 5), (1, 6, 3, 3)]
    # 1x1 laterals on every level, 3x3 convs only on the merged (non-top) levels.
    expected = sum(c * 6 + 6 for c in (8, 16, 4)) + 2 * (6 * 6 * 9 + 6)
    assert sum(p.numel() for p in fpn.parameters()) == expected


def test_top_down_flow():
    fpn = PassdFPN([8, 16, 4], out_channels=6)
    inputs = _inputs()
    base = fpn(inputs)
    # The top input reaches every level; the bottom one only its own.
    top_changed = fpn([inputs[0], inputs[1], inputs[2] + 1.0])
    assert all(not torch.allclose(a, b) for a, b in zip(base, top_changed, strict=True))
    bottom_changed = fpn([inputs[0] + 1.0, inputs[1], inputs[2]])
    assert not torch.allclose(base[0], bottom_changed[0])
    torch.testing.assert_close(base[1], bottom_changed[1])
    torch.testing.assert_close(base[2], bottom_changed[2])
    # The top level is just its lateral conv.
    torch.testing.assert_close(base[2], fpn.lateral_convs[2](inputs[2]))
