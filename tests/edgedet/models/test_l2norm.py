import torch

from edgedet.models.l2norm import L2Norm


def test_normalises_over_channels_with_per_channel_scale():
    norm = L2Norm(2, initial_scale=20.0)
    x = torch.tensor([[3.0, 0.0], [4.0, 0.0]]).view(1, 2, 1, 2)  # norms 5 and 0
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([20.0, 10.0]))
    out = norm(x)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([20 * 3 / 5, 10 * 4 / 5]))
    torch.testing.assert_close(out[0, :, 0, 1], torch.zeros(2))  # eps: no division by 0
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
