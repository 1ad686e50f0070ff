"""The semantic label map's pruned resize gives exactly the labels of resizing every label's logits (_bilinear, which
the segmentation parity tests hold to torch's interpolate) and taking the first largest."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_under_test import rt


def _cases() -> list[tuple[np.ndarray, int, int]]:
    rng = np.random.default_rng(1)
    cases = []
    for case in range(120):
        labels, height, width = int(rng.integers(1, 60)), int(rng.integers(1, 24)), int(rng.integers(1, 24))
        logits = rng.normal(size=(labels, height, width)).astype(np.float32) * np.float32(10 ** rng.uniform(-3, 3))
        if case % 3 == 0:  # ties everywhere
            logits = np.round(logits)
        elif case % 3 == 1:  # regions, as a trained model's logits
            region = rng.integers(0, labels, size=(height, width))
            logits += 6 * (np.arange(labels)[:, None, None] == region[None])
        cases.append((logits, int(rng.integers(1, 120)), int(rng.integers(1, 120))))
    return cases


@pytest.mark.parametrize("n", range(0, 120, 10))
def test_pruned_map_equals_the_full_resize(n: int) -> None:
    for logits, height, width in _cases()[n:n + 10]:
        full = rt._bilinear(logits, height, width).argmax(axis=0)
        assert (rt._semantic_map(logits, height, width) == full).all()


def test_an_ade20k_sized_photo_resizes_only_the_labels_that_can_win() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(150, 128, 128)).astype(np.float32)
    region = np.repeat(np.repeat(rng.integers(0, 150, size=(8, 8)), 16, 0), 16, 1)
    logits += 8 * (np.arange(150)[:, None, None] == region[None])
    labels = rt._semantic_map(logits, 600, 800)
    assert (labels == rt._bilinear(logits, 600, 800).argmax(axis=0)).all()
    assert set(np.unique(labels)) == set(np.unique(region))


def test_non_finite_logits_take_the_full_resize() -> None:
    logits = np.zeros((10, 4, 4), dtype=np.float32)
    logits[3, 1, 1] = np.nan
    assert (rt._semantic_map(logits, 9, 7) == rt._bilinear(logits, 9, 7).argmax(axis=0)).all()
