"""Finding the checkpoint to resume from."""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai_lung.bundle_args import flag
from monai_lung.networks import load_weights

_NUMBER = re.compile(r"(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """Path of the newest resumable checkpoint ``<prefix>*<N>.pt`` in ``ckpt_dir`` (highest N), or None.

    ``CheckpointSaver(file_prefix=prefix, save_interval=...)`` writes these with the epoch as N; they hold
    network, optimizer, LR scheduler and trainer state (``model.pt`` holds the network's weights only).
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{prefix}*.pt"):
        match = _NUMBER.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return str(max(found)[1]) if found else None


def attach_checkpointing(
    trainer,
    ckpt_dir: str | os.PathLike,
    save_dict: dict,
    resume: bool = False,
    map_location=None,
    save: bool = True,
    save_interval: int = 1,
    prefix: str = "checkpoint",
) -> str | None:
    """Resumable checkpoints for ``trainer``: save every ``save_interval`` epochs, and resume when asked.

    ``save_dict`` names the objects to save besides the trainer (network, optimizer, LR scheduler); the
    trainer's own state (epoch, iteration) is added here. This is attached in code rather than listed in
    ``train#handlers`` because a handler that holds the trainer inside the trainer's own config is a
    circular reference for MONAI's config parser.

    Args:
        resume: load the newest ``<prefix>*<epoch>.pt`` in ``ckpt_dir`` when the trainer starts; resuming
            with no checkpoint there is an error.
        save: write checkpoints (False on DDP ranks other than 0).

    Returns:
        The checkpoint path resumed from, or None.
    """
    from monai.handlers import CheckpointLoader, CheckpointSaver

    resume, save = flag(resume, "resume"), flag(save, "save_checkpoints")  # `--resume false` arrives as a string
    objects = {**save_dict, "trainer": trainer}
    path = None
    if resume:
        path = latest_checkpoint(ckpt_dir, prefix)
        if path is None:
            raise FileNotFoundError(f"{ckpt_dir}: resume=True but there is no {prefix}*.pt to resume from")
        CheckpointLoader(load_path=path, load_dict=objects, map_location=map_location).attach(trainer)
    if save:
        from ignite.engine import Events

        CheckpointSaver(
            save_dir=str(ckpt_dir),
            save_dict=objects,
            file_prefix="",  # ignite names the files checkpoint_epoch=N.pt
            save_interval=save_interval,
            n_saved=1,
            epoch_level=True,
        ).attach(trainer)

        def keep_only_the_newest(engine) -> None:
            # n_saved=1 covers this run's files only: drop what a run before left (the one resumed from,
            # or a stale run's higher epochs). The saver has just written this epoch's file (its number is
            # the epoch); modification times cannot tell it apart: a file written a few ms earlier can carry
            # the same coarse timestamp, and deleting the new file made the saver fail an epoch later
            epoch = engine.state.epoch
            numbered = {p: int(m.group(1)) for p in Path(ckpt_dir).glob(f"{prefix}*.pt") if (m := _NUMBER.search(p.name))}
            if epoch not in numbered.values():
                return  # not a save epoch (save_interval > 1): nothing new to keep
            for old, number in numbered.items():
                if number != epoch:
                    old.unlink(missing_ok=True)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, keep_only_the_newest)  # runs after the saver's handler
    return path


def initial_weights(network, weights: str | os.PathLike | None = None):
    """``network`` with the weights of ``weights`` (a bundle's ``model.pt``) loaded, or unchanged for None
    / "": the starting point of a fine-tuning run (e.g. stage 1 again with its own false positives as
    negatives). ``resume`` still wins: its checkpoint is loaded after this."""
    if not weights:
        return network
    return load_weights(network, weights, map_location="cpu")
