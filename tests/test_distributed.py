"""Data-parallel runs under torchrun (2 processes, gloo on CPU).

Each batch of the job is shared out among the ranks and DDP averages the gradients, so where no BatchNorm is
involved (the auto-decoding stage: per-particle poses + volume) a 2-process run is the 1-process run up to
float rounding; a 2-process run killed with SIGKILL resumes to the same result. Both methods run end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpointed_loop, wait_for_mid_epoch_checkpoint

from cryopose.io import read_particles
from cryopose.io.mrc import read_map
from cryopose.simulation.simulate import SimulationConfig, simulate

DIRECT = ["--epochs", "3", "--switch-epoch", "0", "--marginal-epochs", "0", "--resolution-start", "0", "--batch", "16",
          "--device", "cpu", "--local-rounds", "0",  # the training compared: the local refinement runs on rank 0 alone
          "--option", "outlier_mads=0"]  # each rank cuts outliers by its own images' scores: not one process's cut


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=480, snr=0.5, seed=5), folder)
    return folder


def _start(data, run, nproc: int, *args):
    """``cryopose reconstruct`` in ``nproc`` processes (torchrun) or one, in a session of its own."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
              if nproc > 1 else [sys.executable])
    cmd = [*launch, "-m", "cryopose", "reconstruct", str(data / "particles.star"), "-o", str(run), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _run(data, run, nproc: int, *args) -> None:
    proc = _start(data, run, nproc, *args)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (torchrun starts its workers in sessions of their own, so they
    are not in its process group and outlive a ``killpg`` of it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _sigkill_tree(proc, nproc: int, timeout: float = 30) -> None:
    """SIGKILL a torchrun launch and all its workers at once, and wait until none of them runs any more."""
    workers = _descendants(proc.pid)
    assert len(workers) >= nproc, f"torchrun runs {len(workers)} processes, expected {nproc} workers"
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(map(_alive, workers)):
        assert time.monotonic() < deadline, "workers survived SIGKILL"
        time.sleep(0.01)


def _records(run, kind="epoch"):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    _run(data, run, 1, *DIRECT)
    return run


def _assert_same_result(run, reference):
    a, b = read_map(run / "map.mrc").data, read_map(reference / "map.mrc").data
    assert np.abs(a - b).max() < 1e-5 * np.abs(b).max()
    ra, rb = read_particles(run / "poses.star").rotations, read_particles(reference / "poses.star").rotations
    diff = np.abs(ra - rb).max(axis=(1, 2))
    assert np.median(diff) < 1e-5 and diff.max() < 5e-3  # rounding differences grow a little over the epochs
    assert np.abs(rb - np.eye(3)).max(axis=(1, 2)).min() > 0.05  # every particle left its start (identity)


@pytest.mark.slow
def test_two_processes_equal_one(data, single, tmp_path):
    run = tmp_path / "ddp"
    _run(data, run, 2, *DIRECT)
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    assert [r["epoch"] for r in _records(run)] == [0, 1, 2]  # rank 0 alone logs
    _assert_same_result(run, single)


@pytest.mark.slow
def test_killed_distributed_run_resumes(data, single, tmp_path):
    run = tmp_path / "killed"
    proc = _start(data, run, 2, *DIRECT, "--checkpoint-minutes", "0.002")
    wait_for_mid_epoch_checkpoint(proc, run, 1)  # into the second epoch, past a mid-epoch checkpoint
    assert proc.poll() is None, "the run ended before it could be killed"
    _sigkill_tree(proc, 2)
    assert [r["epoch"] for r in _records(run)] == [0]
    killed = checkpointed_loop(run)
    assert killed["epoch"] == 1 and killed["batch"] > 0, killed  # resumes mid-epoch
    _run(data, run, 2, *DIRECT, "--resume")
    assert [r["epoch"] for r in _records(run)] == [0, 1, 2]
    resumed = _records(run, "resume")
    assert len(resumed) == 1 and resumed[0]["epoch"] == 1 and resumed[0]["batch"] == killed["batch"]
    _assert_same_result(run, single)


@pytest.mark.slow
def test_both_methods_run_distributed(data, tmp_path):
    """Both stages of both methods, with the counters summed over the ranks, and a resumed 2-process run."""
    run = tmp_path / "sa"
    common = ["--batch", "16", "--device", "cpu", "--ref", str(data / "ground_truth.mrc")]
    _run(data, run, 2, "--epochs", "1", "--switch-epoch", "1", "--heads", "3", *common)
    _run(data, run, 2, "--epochs", "2", "--resume", *common)
    records = _records(run)
    assert [(r["epoch"], r["stage"]) for r in records] == [(0, "amortized"), (1, "marginal")]
    assert sum(records[0]["head_share"]) == pytest.approx(1.0, abs=1e-3)
    assert all(np.isfinite(r["resolution_0.5_A"]) for r in records)
    assert len(read_particles(run / "poses.star")) == 480

    run = tmp_path / "ss"
    _run(data, run, 2, "--method", "search-supervised", "--epochs", "2", "--switch-epoch", "1",
         "--beam-depth", "3", "--gd-steps", "5", "--option", "denoiser_steps=20", "--denoise-epochs", "1", *common)
    records = _records(run)
    assert [(r["epoch"], r["stage"]) for r in records] == [(0, "search"), (1, "end-to-end")]
    assert records[0]["search_gain"] > 0
    assert len(_records(run, "pretrain")) == 1


def _batchnorm_rank(rank: int, world: int, store: str, out) -> None:
    import torch.distributed as dist

    from cryopose.train.distributed import AllReduceBatchNorm, Context

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    full = torch.nn.BatchNorm2d(3)
    full.weight.data.uniform_(0.5, 2)
    net = AllReduceBatchNorm.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    net[0].weight.data.copy_(full.weight.data)
    reference = full(x)
    reference.square().sum().backward()
    mine = x[rank::world].clone().requires_grad_(True)
    ddp = Context(rank, world).wrap(net)  # kept: its hooks average the gradients during backward
    y = ddp(mine)
    y.square().sum().backward()  # the average over ranks of their parts of the full batch's gradient
    out.put((rank, float((y - reference[rank::world]).abs().max()),
             float((net[0].running_var - full.running_var).abs().max()),
             float((net[0].weight.grad * world - full.weight.grad).abs().max() / full.weight.grad.abs().max())))
    del ddp, y  # a DDP reducer that outlives the group tears it down holding the GIL and can hang the exit
    dist.destroy_process_group()


def test_batchnorm_statistics_are_those_of_the_whole_batch(tmp_path):
    """Two ranks, each with half of a batch, normalise as one BatchNorm over the whole batch would (outputs,
    running variance and averaged weight gradients), which CPU PyTorch's own SyncBatchNorm cannot do."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_batchnorm_rank, args=(r, 2, str(tmp_path / "store"), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for rank, output, running, grad in results:
        assert output < 1e-5 and running < 1e-6 and grad < 1e-5, (rank, output, running, grad)
