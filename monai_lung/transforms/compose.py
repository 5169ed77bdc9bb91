"""``ComposeRandomWithoutMeta``: a training chain whose random part runs on plain tensors.

MONAI wraps every array in a ``MetaTensor`` and records each transform's parameters on it, which is what
``Invertd`` and ``SaveImaged`` need at inference. Training patches are never inverted or saved, and on a
CPU that bookkeeping is a large share of the stage-1 patch pipeline's time for no use. The deterministic part (loading, reorienting,
resampling: these need the affine) keeps its meta data. Transforms of the random part that need the
voxel size (``RandNoduleInsertiond``) take it as ``spacing``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandomizableTrait, Transform


def _is_random(t) -> bool:
    # the rule CacheDataset / PersistentDataset use for where caching stops
    return isinstance(t, RandomizableTrait) or not isinstance(t, Transform)


@contextmanager
def meta_tracking(enabled: bool) -> Iterator[None]:
    """MONAI's meta tracking switched to ``enabled`` inside the block, put back as it was afterwards (also
    on an exception). The switch is process-wide: do not share it with another thread's transforms."""
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


class ComposeRandomWithoutMeta(Compose):
    """A ``Compose`` that runs the transforms from its first random one on with MONAI's meta tracking off
    (:func:`meta_tracking`); outputs of that part are plain ``torch.Tensor``s. Before it,
    everything runs as in ``Compose``, and the list stays flat, so ``CacheDataset`` / ``PersistentDataset``
    cache the same deterministic part and random states are derived exactly as for a ``Compose``.
    """

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):
        first = self.get_index_of_first(_is_random)
        stop = len(self.transforms) if end is None else end
        if first is None or first >= stop:
            return super().__call__(input_, start, end, threading, lazy)
        if start < first:
            input_ = super().__call__(input_, start, first, threading, lazy)
            start = first
        with meta_tracking(False):
            return super().__call__(input_, start, stop, threading, lazy)
