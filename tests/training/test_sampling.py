"""Class-balanced sampling gives balanced batches; random epochs see each image at most once."""

import numpy as np

from covidscreen.training.sampling import balanced_epoch, epoch_rows, random_epoch


def test_balanced_sampling_gives_balanced_batches():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)  # 90% / 9% / 1%
    idx = np.arange(1000) + 5000  # row ids differ from positions on purpose
    rows = balanced_epoch(idx, labels, n=32 * 200, rng=np.random.default_rng(0))
    drawn = labels[rows - 5000]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.03)
    batch_shares = np.array([np.bincount(drawn[b:b + 32], minlength=3) / 32 for b in range(0, len(drawn), 32)])
    assert np.allclose(batch_shares.mean(0), 1 / 3, atol=0.03)
    assert batch_shares.min(1).mean() > 0.15  # a typical batch holds every class, even the 1% one


def test_random_epoch_is_a_permutation_and_plain_sampling_keeps_the_imbalance():
    labels = np.array([0] * 90 + [1] * 10)
    idx = np.arange(100)
    rows = random_epoch(idx, None, np.random.default_rng(0))
    assert sorted(rows) == list(idx)
    rows = epoch_rows(idx, labels, 50, np.random.default_rng(0), "random")
    assert len(rows) == len(set(rows)) == 50
    rows = epoch_rows(idx, labels, None, np.random.default_rng(0), "balanced")
    assert len(rows) == 100 and abs(np.mean(labels[rows]) - 0.5) < 0.15


def test_an_epoch_shorter_than_a_batch_still_trains():
    import pytest

    from covidscreen.errors import DataError
    from covidscreen.training.sampling import effective_batch_size

    assert effective_batch_size(32, 500) == 32
    assert effective_batch_size(32, 10) == 10  # one step per epoch instead of none (the last batch is dropped)
    with pytest.raises(DataError, match="at least 2"):
        effective_batch_size(32, 1)
