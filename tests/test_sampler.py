from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reid_transformers.data import PKSampler, RandomBatchSampler


def labels(counts):
    return np.concatenate([np.full(n, pid) for pid, n in enumerate(counts)])


def test_batches_hold_p_identities_with_k_images_each():
    pids = labels([8, 5, 3, 12, 7, 4, 9, 2])
    sampler = PKSampler(pids, num_identities=4, num_instances=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        per_id = Counter(int(pids[i]) for i in batch)
        assert len(per_id) == 4 and set(per_id.values()) == {3}


def test_replacement_only_for_small_identities():
    pids = labels([2, 9, 9, 9])
    sampler = PKSampler(pids, num_identities=2, num_instances=4, seed=0)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for pid in set(pids[batch]):
                group = [i for i in batch if pids[i] == pid]
                if pid == 0:
                    assert set(group) == {0, 1}  # both images, then repeats
                else:
                    assert len(set(group)) == 4  # no repeats when K images exist


def test_epoch_covers_images_without_reuse():
    pids = labels([4] * 10)
    sampler = PKSampler(pids, num_identities=5, num_instances=4)
    seen = [i for batch in sampler for i in batch]
    assert sorted(seen) == list(range(40))


def test_seeded_and_epoch_dependent():
    pids = labels([6] * 12)
    a = list(PKSampler(pids, 3, 2, seed=5))
    b = list(PKSampler(pids, 3, 2, seed=5))
    assert a == b
    c = PKSampler(pids, 3, 2, seed=5)
    c.set_epoch(1)
    assert list(c) != a


def test_ranks_get_disjoint_batches_of_equal_count():
    pids = labels([5, 6, 7, 8, 4, 9, 6, 5, 7, 3])
    shards = [list(PKSampler(pids, 2, 4, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    flat = [tuple(b) for s in shards for b in s]
    assert len(flat) == len(set(flat))
    whole = list(PKSampler(pids, 2, 4, seed=3))
    assert set(flat) <= {tuple(b) for b in whole}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_identities": 0, "num_instances": 4}, "num_identities must be an integer >= 1"),
        ({"num_identities": 9, "num_instances": 2}, "has only 3 identities"),
        ({"num_identities": 2, "num_instances": 2, "num_replicas": 2, "rank": 2}, "rank must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(labels([3, 3, 3]), **kwargs)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        PKSampler([], 1, 1)


def test_random_batches_cover_the_dataset_once_per_epoch():
    sampler = RandomBatchSampler(70, batch_size=32, seed=3)
    batches = list(sampler)
    assert [len(b) for b in batches] == [32, 32, 6] == [len(b) for b in batches][: len(sampler)]
    assert sorted(i for b in batches for i in b) == list(range(70))
    assert list(sampler) == batches  # same epoch, same shuffle
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # A final batch of one image would break BatchNorm in training: it is left out.
    lonely = RandomBatchSampler(65, batch_size=32)
    assert [len(b) for b in lonely] == [32, 32] and len(lonely) == 2


def test_random_batches_are_disjoint_across_ranks_and_equal_in_number():
    ranks = [RandomBatchSampler(100, 16, seed=0, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert {len(b) for b in per_rank} == {len(ranks[0])} == {2}  # 7 batches cut to 6
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 6 * 16
    with pytest.raises(ValueError, match="rank must be in"):
        RandomBatchSampler(10, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        RandomBatchSampler(10, 0)
