"""Training helpers outside a bundle run: resumable checkpoints."""

from __future__ import annotations

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
