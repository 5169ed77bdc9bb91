"""Training data for stage 2: crops of a crop bank as a MONAI dataset, and a positive/negative balanced sampler."""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.data import Dataset
from monai.transforms import apply_transform
from torch.utils.data.distributed import DistributedSampler

from monai_lung.stage2.bank import CropBank, centre_view
from monai_lung.datalist import entry_seriesuid
from monai_lung.io import DataError
from monai_lung.transforms.compose import meta_tracking


class CropBankDataset(Dataset):
    """The crops of a crop bank for a set of scans, as MONAI dictionaries.

    Each item: ``image`` (1, S, S, S) float32 tensor, the stored crop (S = the bank's ``crop_size`` or ``view_size``, [0, 1]
    scaled CT on the bank's grid, 1 mm by default, the candidate point at voxel S // 2); ``label`` int64
    scalar (1 nodule, 0 not); ``seriesuid``; ``source``; ``point`` (3,) world LPS mm; ``diameter_mm`` (the
    nodule's for positives, NaN for negatives). ``transform`` then cuts the final crop (jitter, augmentation).

    Args:
        bank_dir: a folder written by :func:`~monai_lung.stage2.bank.build_crop_bank`.
        data: data-list entries (``seriesuid`` or ``image``) whose crops to use, e.g. the ``training`` list;
            None: every scan in the bank.
        transform: MONAI transform applied to each item.
        sources: keep only these sources (e.g. ``["nodule", "hard_negative"]``); None: all.
        track_meta: run ``transform`` on MetaTensors (MONAI's default). Off by default: a stored crop's
            geometry is fixed (the bank's grid, candidate at the centre; transforms that work in mm take
            :func:`~monai_lung.stage2.bank.bank_spacing`), and MONAI's per-transform meta bookkeeping is a
            large share of the loading time for no use.
        view_size: hand ``transform`` only the central ``view_size``³ of each stored crop (:func:`centre_view`;
            None: all of it). Training needs no more than the final crop plus its jitter and zoom margin, and
            every transform's cost grows with the volume: 44³ instead of 64³ makes the classification bundle's
            training chain markedly cheaper.

    A scan of ``data`` missing from the bank is an error (the bank is stale or was built for other keys).
    """

    def __init__(
        self,
        bank_dir: str | os.PathLike,
        data: Sequence[Mapping] | None = None,
        transform: Callable | None = None,
        sources: Sequence[str] | None = None,
        track_meta: bool = False,
        view_size: int | None = None,
    ):
        self.bank = CropBank(bank_dir)
        self.track_meta = track_meta
        self.view_size = None if view_size is None else int(view_size)
        index = self.bank.read_index()
        if data is not None:
            uids = [entry_seriesuid(e) if isinstance(e, Mapping) else str(e) for e in data]
            missing = sorted(set(uids) - set(index["seriesuid"]) - set(self._empty_scans(uids)))
            if missing:
                raise DataError(
                    bank_dir,
                    f"{len(missing)} scan(s) of the data list are not in the crop bank, first {missing[0]} "
                    "(run `monai-lung crops` for that list)",
                )
            index = index[index["seriesuid"].isin(set(uids))]
        if sources is not None:
            index = index[index["source"].isin(list(sources))]
        self.index = index.reset_index(drop=True)
        items = [
            {
                "seriesuid": r.seriesuid, "row": int(r.row), "label": int(r.label), "source": r.source,
                "point": np.array([r.coordX, r.coordY, r.coordZ], dtype=np.float64),
                "diameter_mm": float(r.diameter_mm) if int(r.label) == 1 else float("nan"),
            }
            for r in self.index.itertuples()
        ]
        super().__init__(items, transform)
        self._crops: dict[str, np.ndarray] = {}

    def _empty_scans(self, uids: Sequence[str]) -> list[str]:
        # a finished scan may have no crops at all (no nodules, no lung, no candidates): not missing
        return [u for u in uids if self.bank.done(u)]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int labels of the items, for :class:`BalancedSampler`."""
        return self.index["label"].to_numpy(dtype=np.int64)

    @property
    def sources(self) -> np.ndarray:
        """(N,) str sources of the items."""
        return self.index["source"].to_numpy(dtype=str)

    def _transform(self, index: int):
        item = dict(self.data[index])
        uid = item["seriesuid"]
        if uid not in self._crops:
            self._crops[uid] = self.bank.load_crops(uid)
        crop = np.asarray(centre_view(self._crops[uid][item["row"]], self.view_size), dtype=np.float32)
        item["image"] = torch.from_numpy(crop)[None]
        item["label"] = torch.tensor(item.pop("label"), dtype=torch.long)
        del item["row"]
        if self.transform is None:
            return item
        with meta_tracking(self.track_meta):
            return apply_transform(self.transform, item)


class BalancedSampler(DistributedSampler):
    """Epochs of a fixed length with a fixed share of positives, for one process or each DDP rank.

    Every epoch draws ``num_samples`` items in total (over all ranks): ``num_samples / (1 + neg_pos_ratio)``
    positives and the rest negatives. Within each class, items are drawn without replacement by walking
    fresh random permutations, so every positive is used before any repeats (positives are few and
    repeat, negatives are many and rotate through epochs). The draw is the same on every rank (seeded by
    ``seed`` and the epoch); rank ``r`` takes every ``num_replicas``-th positive and an equal-length run of
    the negatives, so each rank's batches hold the same share and all ranks have the same length.

    It subclasses ``DistributedSampler`` so that MONAI's workflows call ``set_epoch`` at every epoch (used
    in single-process training too); without ``set_epoch`` each iteration moves to the next epoch itself.

    Args:
        labels: (N,) item labels (1 positive, 0 negative), e.g. ``CropBankDataset.labels``.
        num_samples: items per epoch over all ranks (rounded up to a multiple of ``num_replicas``); None: N.
        neg_pos_ratio: negatives per positive.
        sources: (N,) item sources; with ``source_weights`` the negatives of each source get that share
            (normalised over the sources present), e.g. ``{"hard_negative": 2, "random_lung": 1}``.
        num_replicas, rank: DDP world size and rank; default from ``torch.distributed`` when initialised, else 1 / 0.
        seed: base seed.
    """

    def __init__(
        self,
        labels: Sequence[int],
        num_samples: int | None = None,
        neg_pos_ratio: float = 1.0,
        sources: Sequence[str] | None = None,
        source_weights: Mapping[str, float] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        labels = np.asarray(labels).astype(np.int64)
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.pos = np.flatnonzero(labels == 1)
        self.neg = np.flatnonzero(labels == 0)
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(f"balanced sampling needs positives and negatives, got {len(self.pos)} and {len(self.neg)}")
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        total = len(labels) if num_samples is None else int(num_samples)
        self.per_rank = max(1, math.ceil(total / self.num_replicas))
        self.total = self.per_rank * self.num_replicas
        self.num_samples = self.per_rank  # what DistributedSampler reports per rank
        self.total_size = self.total
        self.num_pos = int(round(self.total / (1.0 + float(neg_pos_ratio))))
        self.neg_groups: list[tuple[np.ndarray, float]] = [(self.neg, 1.0)]
        if source_weights is not None:
            if sources is None:
                raise ValueError("source_weights needs sources")
            src = np.asarray(sources).astype(str)
            groups = [(self.neg[src[self.neg] == s], float(w)) for s, w in source_weights.items()]
            groups = [(g, w) for g, w in groups if len(g) and w > 0]
            if not groups:
                raise ValueError(f"no negatives from the weighted sources {sorted(source_weights)}")
            self.neg_groups = groups
        self._auto_epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch_set = True

    @staticmethod
    def _walk(indices: np.ndarray, n: int, g: torch.Generator) -> np.ndarray:
        """``n`` items from ``indices`` walking fresh random permutations (no repeat before all are used)."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        reps = math.ceil(n / len(indices))
        order = torch.cat([torch.randperm(len(indices), generator=g) for _ in range(reps)])[:n].numpy()
        return indices[order]

    def _negatives(self, n: int, g: torch.Generator) -> np.ndarray:
        if len(self.neg_groups) == 1 or n <= 0:
            return self._walk(self.neg_groups[0][0], n, g)
        weights = torch.tensor([w for _, w in self.neg_groups], dtype=torch.double)
        counts = torch.bincount(torch.multinomial(weights, n, replacement=True, generator=g), minlength=len(weights))
        picks = np.concatenate([self._walk(idx, int(c), g) for (idx, _), c in zip(self.neg_groups, counts)])
        return picks[torch.randperm(len(picks), generator=g).numpy()]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch if self._epoch_set else self._auto_epoch
        self._auto_epoch += 1
        g = torch.Generator()
        g.manual_seed(int(self.seed) * 100003 + int(epoch))
        pos = self._walk(self.pos, self.num_pos, g)
        neg = self._negatives(self.total - self.num_pos, g)
        mine_pos = pos[self.rank :: self.num_replicas]
        # equal lengths on every rank: rank r's negatives fill up what its positives leave free
        pos_counts = [len(pos[r :: self.num_replicas]) for r in range(self.num_replicas)]
        start = sum(self.per_rank - c for c in pos_counts[: self.rank])
        mine_neg = neg[start : start + self.per_rank - pos_counts[self.rank]]
        mine = np.concatenate([mine_pos, mine_neg])
        mine = mine[torch.randperm(len(mine), generator=g).numpy()]
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.per_rank
