import json
from pathlib import Path

import pytest

from edgedet.cli import main
from edgedet.models.summary import (
    PAPER_CONFIGURATIONS,
    NamedConfiguration,
    count_gflops,
    summarize,
)

WITH_PAPER_FIGURE = [c for c in PAPER_CONFIGURATIONS if c.paper_params_m is not None]


def test_required_rows_exist() -> None:
    names = {c.name for c in PAPER_CONFIGURATIONS}
    for required in ("passd_vgg16_320_voc", "passd_vgg16_320_voc_convhead",
                     "passd_mobilenet_320_coco", "passd_resnet101_320_coco",
                     "passd_resnet101_768_coco", "harnet_r50_coco", "dsanet_r50_coco",
                     "daipnet_vgg16_300_coco"):
        assert required in names
    assert len(names) == len(PAPER_CONFIGURATIONS)


@pytest.mark.parametrize("config", WITH_PAPER_FIGURE, ids=lambda c: c.name)
def test_parameter_counts_within_3_percent_of_the_papers(config: NamedConfiguration) -> None:
    row = summarize(config, with_flops=False)
    assert row.params_m == pytest.approx(config.paper_params_m, rel=0.03)


def test_pa_head_adds_about_0_05m_over_the_plain_head() -> None:
    by_name = {c.name: c for c in PAPER_CONFIGURATIONS}
    pa = summarize(by_name["passd_vgg16_320_voc"], with_flops=False).params_m
    plain = summarize(by_name["passd_vgg16_320_voc_convhead"], with_flops=False).params_m
    assert pa - plain == pytest.approx(0.05, abs=0.01)


def test_flops_of_a_single_conv_are_counted_as_two_per_multiply_add() -> None:
    import torch
    from torch import nn

    class OneConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

        def forward_export(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (self.conv(x),)

    # 8 output channels x 16x16 positions x (3 x 3 x 3) multiply-adds x 2
    assert count_gflops(OneConv(), (16, 16)) * 1e9 == pytest.approx(8 * 256 * 27 * 2)


def test_summary_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--json", "--names", "passd_mobilenet_320_coco"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert {"name", "params_m", "gflops", "num_boxes"} <= set(row)
    assert row["name"] == "passd_mobilenet_320_coco" and row["num_boxes"] == 6375
    assert 1.0 < row["gflops"] < 50.0
    assert main(["summary", "--names", "no_such_model"]) == 2


def test_summary_of_a_missing_or_corrupt_checkpoint_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "checkpoint not found: " in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(b"")
    (tmp_path / "photo.jpg").write_bytes(b"")
    for given, message in ((tmp_path / "run", "is a folder; give the checkpoint in it (e.g. "),
                           (tmp_path / "photo.jpg", "is not a checkpoint"),
                           ("", "checkpoint path is empty")):  # was: every architecture
        assert main(["summary", "--checkpoint", str(given)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert main(["summary", "--checkpoint", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert "broken.safetensors: not a readable safetensors file" in err
    assert "Traceback" not in err
    for extra in (["--no-flops"], ["--names", "passd_mobilenet_320_coco"]):
        assert main(["summary", "--checkpoint", str(tmp_path / "broken"), *extra]) == 2
        assert "--names and --no-flops are for the paper configurations" in (
            capsys.readouterr().err)


def test_summary_of_a_checkpoint_with_a_bad_input_size_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tests.quantize.tiny_checkpoint import write_tiny_checkpoint

    weights = write_tiny_checkpoint(tmp_path / "tiny")
    with safe_open(str(weights), "pt") as handle:  # the config travels in the metadata too
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    config["preprocess"]["input_size"] = [0, 0]
    save_file(tensors, str(weights), metadata={**metadata, "config": json.dumps(config)})
    weights.with_suffix(".json").write_text(json.dumps(config))
    assert main(["summary", "--checkpoint", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "input size [0, 0] in its config is not a width and height" in err
    assert "Traceback" not in err
