"""Reductions that make every DDP rank take the same branch, run on a real 2-process gloo group."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgedet._io import DirectoryBusyError, exclusive_lock
from train.distributed import DistInfo, all_true, all_true_each, locked_by_main_rank

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


def _failing_lock(folder, holder):
    raise OSError(f"cannot create {folder}: disk gone")


def _rank_locking(rank: int, out_dir: str, mode: str) -> None:
    import train.distributed

    if mode == "fails" and rank == 0:  # a lock failure that is not a busy folder
        train.distributed.exclusive_lock = _failing_lock
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store-{mode}", rank=rank,
                            world_size=2)
    folder = f"{out_dir}/run"
    try:
        info = DistInfo(rank, 2, rank, torch.device("cpu"))
        try:
            with locked_by_main_rank(folder, "train/main.py", info):
                outcome = "entered"
                if rank == 0:  # the lock is held for the whole block ...
                    try:
                        with exclusive_lock(folder, "probe"):
                            outcome += ", not held"
                    except DirectoryBusyError:
                        outcome += ", held"
            if rank == 0:  # ... and released after it
                with exclusive_lock(folder, "probe"):
                    outcome += ", released"
        except (DirectoryBusyError, OSError) as error:
            outcome = f"{type(error).__name__}: {error}"
        # Had a rank gone on, this collective would pair with nothing and hang the test.
        all_true(True, info)
    finally:
        dist.destroy_process_group()
    with open(f"{out_dir}/{mode}-rank{rank}.json", "w") as file:
        json.dump(outcome, file)


def _outcomes(tmp_path, mode: str) -> list[str]:
    mp.spawn(_rank_locking, args=(str(tmp_path), mode), nprocs=2, join=True)
    return [json.loads((tmp_path / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]


def test_a_busy_folder_stops_every_rank_before_training(tmp_path) -> None:
    """Rank 0 cannot take the folder (this process holds it): rank 1 must hear so and stop
    too, not go on to wait for rank 0 in DDP's constructor."""
    with exclusive_lock(tmp_path / "run", "quantize/run.py"):
        busy = _outcomes(tmp_path, "busy")
    assert busy[0].startswith("DirectoryBusyError: ") and "quantize/run.py (pid" in busy[0]
    assert busy[1].startswith("DirectoryBusyError: rank 1 stops: rank 0 could not take")


def test_any_lock_failure_on_rank_0_stops_every_rank(tmp_path) -> None:
    failed = _outcomes(tmp_path, "fails")
    assert failed[0] == f"OSError: cannot create {tmp_path}/run: disk gone"
    assert failed[1].startswith("DirectoryBusyError: rank 1 stops: rank 0 could not take")


def test_a_free_folder_lets_every_rank_in_with_rank_0_holding_it(tmp_path) -> None:
    assert _outcomes(tmp_path, "free") == ["entered, held, released", "entered"]


def test_a_world_of_one_needs_no_process_group() -> None:
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    assert all_true_each([True, False], info) == [True, False]
    assert all_true(True, info) is True
