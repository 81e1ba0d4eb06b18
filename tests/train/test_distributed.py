"""Reductions that make every DDP rank take the same branch, run on a real 2-process gloo group."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.distributed import DistInfo, all_true, all_true_each

# Rank 0 has a mid-epoch save due and no signal; rank 1 has no clock vote (True) and a signal.
FLAGS = {0: [True, True, False], 1: [True, False, False]}


def _rank(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=2)
    try:
        info = DistInfo(rank, 2, rank, torch.device("cpu"))
        result = [all_true_each(FLAGS[rank], info), all_true(rank == 0, info)]
    finally:
        dist.destroy_process_group()
    with open(f"{out_dir}/rank{rank}.json", "w") as file:
        json.dump(result, file)


def test_each_flag_is_true_only_where_every_rank_says_so(tmp_path) -> None:
    # Spawned, not forked (no multiprocessing.Manager either): the pytest worker may hold
    # threads (JAX, OpenMP) that a fork would copy mid-lock.
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] == [[True, False, False], False]


def test_a_world_of_one_needs_no_process_group() -> None:
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    assert all_true_each([True, False], info) == [True, False]
    assert all_true(True, info) is True
