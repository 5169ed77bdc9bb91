"""Training helpers outside a bundle run: resumable checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine

from monai_lung.training import attach_checkpointing


def _engine(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
    def step(_engine, batch):
        optimizer.zero_grad()
        loss = network(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step)


def test_a_fresh_run_beside_a_stale_checkpoint_keeps_its_own_newest(tmp_path):
    # a stale run left epoch 7 behind; a new run (not resumed) must neither crash nor keep epoch 7
    torch.save({"stale": True}, tmp_path / "checkpoint_epoch=7.pt")
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = _engine(net, opt)
    attach_checkpointing(engine, tmp_path, {"network": net, "optimizer": opt})
    engine.run([torch.ones(2, 3)] * 2, max_epochs=3)
    assert sorted(p.name for p in tmp_path.glob("checkpoint*.pt")) == ["checkpoint_epoch=3.pt"]

    # resuming continues from epoch 3 and again keeps only the newest
    net2 = torch.nn.Linear(3, 1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1)
    engine2 = _engine(net2, opt2)
    resumed = attach_checkpointing(engine2, tmp_path, {"network": net2, "optimizer": opt2}, resume=True)
    assert resumed.endswith("checkpoint_epoch=3.pt")
    state = engine2.run([torch.ones(2, 3)] * 2, max_epochs=5)
    assert state.epoch == 5
    assert sorted(p.name for p in tmp_path.glob("checkpoint*.pt")) == ["checkpoint_epoch=5.pt"]
    torch.testing.assert_close(net2.weight, torch.load(tmp_path / "checkpoint_epoch=5.pt", weights_only=True)["network"]["weight"])


def test_the_checkpoint_just_written_is_kept_whatever_the_timestamps_say(tmp_path):
    # a leftover with a later modification time (a copied folder, clock skew, or two files within one coarse
    # timestamp tick): the run must keep its own file, not the leftover, and go on saving
    stale = tmp_path / "checkpoint_epoch=7.pt"
    torch.save({"stale": True}, stale)
    future = stale.stat().st_mtime + 3600
    os.utime(stale, (future, future))
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = _engine(net, opt)
    attach_checkpointing(engine, tmp_path, {"network": net, "optimizer": opt})
    state = engine.run([torch.ones(2, 3)] * 2, max_epochs=3)
    assert state.epoch == 3
    assert sorted(p.name for p in tmp_path.glob("checkpoint*.pt")) == ["checkpoint_epoch=3.pt"]


RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from monai_lung.training.distributed import shutdown_process_group
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
for _ in range(5):  # what ignite's metric gather does at the end of an epoch
    value = torch.rand(3)
    parts = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value)
    gathered = torch.cat(parts)
    del parts
shutdown_process_group() if sys.argv[1] == "shutdown" else dist.destroy_process_group()
assert not dist.is_initialized()
"""


@pytest.mark.slow
def test_ranks_exit_cleanly_right_after_their_last_gather(tmp_path):
    """Three-rank gloo runs that end straight after an all_gather: with `shutdown_process_group` every run exits 0.

    With a bare `destroy_process_group()` 8 of 15 such three-rank runs here aborted at interpreter exit (a
    gloo worker freeing the gathered tensors without the GIL: "terminate called without an active
    exception"), so three runs catch that regression about 9 times in 10."""
    from monai_lung.training.distributed import shutdown_process_group

    shutdown_process_group()  # no process group: a no-op, not an error
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(script), "shutdown"],
            capture_output=True, encoding="utf-8", errors="replace", timeout=120, env=env,
        )
        assert proc.returncode == 0, f"attempt {attempt}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
