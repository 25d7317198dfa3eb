"""Length-grouped batches (paper section 3.4, Table 9).

Group the data by length and draw every mini-batch from one group, so little compute goes
to padding; a shared seed makes every rank draw the same group at each step (equal work,
no rank waits for another).
"""
from __future__ import annotations

import bisect
import math
from typing import Iterator, Mapping, Sequence

import torch

#: Paper Table 9 length ranges (tokens): 0-500, 500-1000, 1000-2000, ..., 7000-8192.
TABLE9_BOUNDARIES: tuple[int, ...] = (0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8192)


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices, each from one length group (section 3.4).

    ``lengths[i]`` is the token length of example i (e.g. its longest text). Group g holds
    the lengths in ``[boundaries[g], boundaries[g+1])``; longer ones join the last group.
    ``batch_size`` is the global batch (summed over ranks, as in Table 9): an int, or a
    mapping from a group's lower bound to its batch size (Table 9 gives one per range).

    Each epoch the indices of every group are shuffled and cut into batches, and the
    batches of all groups are shuffled together, from ``seed + epoch`` only: every rank
    computes the same plan, so all ranks work on the same group at each step, and rank r
    takes the r-th of ``world_size`` equal, disjoint slices of each batch. A group's last,
    short batch is dropped with ``drop_last``, else topped up to a multiple of ``world_size``
    (so no rank gets an empty batch) with examples it does not hold yet: the group's own,
    then those of the nearest groups. No example appears twice in a global batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int | Mapping[int, int], *,
                 boundaries: Sequence[int] = TABLE9_BOUNDARIES, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        self.lengths = [int(x) for x in lengths]
        if any(x < 0 for x in self.lengths):
            i = next(i for i, x in enumerate(self.lengths) if x < 0)
            raise ValueError(f"lengths[{i}] is negative ({self.lengths[i]})")
        self.boundaries = tuple(int(b) for b in boundaries)
        if len(self.boundaries) < 2 or list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries must be >= 2 increasing values, got {self.boundaries}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.seed, self.rank, self.world_size, self.drop_last = int(seed), int(rank), int(world_size), drop_last
        self.epoch = 0
        n_groups = len(self.boundaries) - 1
        self.group_of = [min(max(bisect.bisect_right(self.boundaries, x) - 1, 0), n_groups - 1) for x in self.lengths]
        self.groups: list[list[int]] = [[] for _ in range(n_groups)]
        for i, g in enumerate(self.group_of):
            self.groups[g].append(i)
        self.batch_sizes = self._resolve_batch_sizes(batch_size)

    def _resolve_batch_sizes(self, batch_size: int | Mapping[int, int]) -> list[int]:
        lows = self.boundaries[:-1]
        if isinstance(batch_size, Mapping):
            unknown = [k for k in batch_size if k not in lows]
            if unknown:
                raise ValueError(f"batch_size keys must be group lower bounds {lows}, got {unknown}")
            sizes = [int(batch_size.get(lo, 0)) for lo in lows]
            for g, lo in enumerate(lows):
                if self.groups[g] and sizes[g] < 1:
                    raise ValueError(f"group {lo}-{self.boundaries[g + 1]} has {len(self.groups[g])} examples "
                                     f"but no batch size")
        else:
            sizes = [int(batch_size)] * len(lows)
        for g, size in enumerate(sizes):
            if self.groups[g] and size % self.world_size:
                raise ValueError(f"batch size {size} of group {lows[g]}-{self.boundaries[g + 1]} is not divisible "
                                 f"by world_size {self.world_size}")
        return sizes

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle for each epoch (call on every rank with the same epoch)."""
        self.epoch = int(epoch)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's global batches in order (identical on every rank)."""
        gen = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        orders = [[members[i] for i in torch.randperm(len(members), generator=gen).tolist()] for members in self.groups]
        batches: list[list[int]] = []
        for g, (order, size) in enumerate(zip(orders, self.batch_sizes)):
            for s in range(0, len(order), size):
                batch = order[s:s + size]
                if len(batch) < size:
                    if self.drop_last:
                        continue
                    batch = batch + self._top_up(batch, -len(batch) % self.world_size, g, orders)
                batches.append(batch)
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def _top_up(self, batch: list[int], need: int, group: int, orders: list[list[int]]) -> list[int]:
        """``need`` examples that are not in ``batch``: the group's own first, then the nearest groups'.

        An example twice in one global batch would meet its own positive as an in-batch
        negative (its loss could not fall below log 2), so a short batch is never topped up
        with an example it already holds.
        """
        if not need:
            return []
        taken, extra = set(batch), []
        nearest = sorted(range(len(orders)), key=lambda h: (abs(h - group), h))
        for h in nearest:
            for i in orders[h]:
                if i not in taken:
                    extra.append(i)
                    taken.add(i)
                    if len(extra) == need:
                        return extra
        raise ValueError(f"{len(self.lengths)} examples cannot fill a batch for {self.world_size} processes "
                         "without repeating one")

    def _local(self, batch: list[int], rank: int) -> list[int]:
        k = len(batch) // self.world_size
        return batch[rank * k:(rank + 1) * k]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield self._local(batch, self.rank)

    def __len__(self) -> int:
        n = 0
        for members, size in zip(self.groups, self.batch_sizes):
            if members:
                n += len(members) // size if self.drop_last else math.ceil(len(members) / size)
        return n

    def padding_share(self, batch: Sequence[int]) -> float:
        """Share of padding tokens when ``batch`` is padded to its longest example."""
        if not batch:
            return 0.0
        lens = [self.lengths[i] for i in batch]
        total = len(lens) * max(lens)
        return 1.0 - sum(lens) / total if total else 0.0

    def stats(self, epoch: int | None = None) -> dict:
        """Padding over one epoch (all ranks' local batches), against unsorted random batching.

        ``random_padding_share`` cuts one random permutation of the same examples into
        batches of the same sizes. Both shares are token-weighted: padding tokens / padded
        tokens.
        """
        plan = self.global_batches(epoch)
        gen = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch) + 7919)
        perm = torch.randperm(len(self.lengths), generator=gen).tolist()
        random_plan, pos = [], 0
        for batch in plan:
            random_plan.append([perm[(pos + j) % len(perm)] for j in range(len(batch))])
            pos += len(batch)

        def share(batches: list[list[int]]) -> float:
            real = padded = 0
            for batch in batches:
                for r in range(self.world_size):
                    local = [self.lengths[i] for i in self._local(batch, r)]
                    if local:
                        real += sum(local)
                        padded += len(local) * max(local)
            return 1.0 - real / padded if padded else 0.0

        per_group = {f"{lo}-{hi}": 0 for lo, hi in zip(self.boundaries[:-1], self.boundaries[1:])}
        for batch in plan:
            g = self.group_of[batch[0]]
            per_group[f"{self.boundaries[g]}-{self.boundaries[g + 1]}"] += 1
        return {"batches": len(plan), "padding_share": share(plan), "random_padding_share": share(random_plan),
                "batches_per_group": {k: v for k, v in per_group.items() if v}}
