import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.eval_checkpoints import main
from edgedet.data.synthetic import SyntheticConfig
from edgedet.decoder import HeadDecoder
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.preprocess import PreprocessConfig
from train.data import EvalDataset, collate_eval, open_splits
from train.distributed import DistInfo
from train.evaluation import evaluate

# A trained checkpoint, so that the APs compared are not the zeros of random weights.
CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints/harnet_pruned_spatial/best"


def test_seed_1_is_the_split_training_scores_on(capsys):
    """The AP printed for seed 1 is what training's own evaluation (``open_splits``' val
    split with the default ``--synthetic-seed 0``) gives the same checkpoint; another seed
    scores other images."""
    stem = CHECKPOINT
    assert main([str(stem), "--seeds", "1,4", "--images", "3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    model, config = build_from_checkpoint(stem)
    preprocess = PreprocessConfig.from_dict(config["preprocess"])
    splits = open_splits("synthetic", img_size=tuple(preprocess.input_size), synthetic_train=1,
                         synthetic_val=3, synthetic_config=SyntheticConfig(image_size=(640, 480)))
    loader = DataLoader(EvalDataset(splits.val, preprocess), batch_size=8,
                        collate_fn=collate_eval)
    metrics = evaluate(model, loader, HeadDecoder.from_manifest(config),
                       DistInfo(0, 1, 0, torch.device("cpu")))
    assert row["checkpoint"] == str(stem)
    assert row["1"] == pytest.approx(100.0 * metrics["AP"]) and row["1"] > 10
    assert set(row) == {"checkpoint", "1", "4"} and row["4"] != row["1"]


@pytest.mark.parametrize("argv", [["x", "--images", "0"], ["x", "--seeds", "1,a"],
                                  ["x", "--seeds", "-1"], ["no/such/checkpoint"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err
