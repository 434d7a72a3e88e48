"""The fits of the fitted models stream: bounded state, the same statistics as holding every frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vad.models import build
from vad.models._base import Reservoir
from vad.models.motion_patch import BINS


def _batches(seed: int = 0) -> list[torch.Tensor]:
    """Three batches of random gray clips (B, 1, 8, 24, 32) in [0, 1], of different batch sizes."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, 8, 24, 32, generator=g) ** 2 for b in (2, 3, 1)]


@pytest.mark.parametrize("statistic", ["raw", "minus_q", "minus_mean"])
def test_motion_patch_streamed_statistics_equal_the_in_memory_ones(statistic):
    model = build("motion_patch", clip_len=8, height=24, width=32, score_patch=8, statistic=statistic, quantile=0.9).eval()
    model.fit(iter(_batches()))  # a one-shot iterator: read once
    # the reference: every frame's energies held at once (what the fit did before it streamed)
    e = torch.cat([model.energy(x).flatten(0, 1) for x in _batches()]).double()  # (48, gh, gw)
    assert torch.allclose(model.cell_mean.double(), e.mean(dim=0), rtol=0, atol=1e-7)
    assert float(model.energy_scale) == pytest.approx(float(e.mean()), abs=1e-7)
    if statistic == "minus_q":  # the only statistic that reads the quantile (the others leave it 0)
        q = torch.quantile(e.flatten(1), 0.9, dim=0).view_as(model.cell_q)
        assert (model.cell_q.double() - q).abs().max() <= 1 / BINS  # exact to a bin width
    frames = model.statistic(e.float()).flatten(1).amax(dim=1).double()
    assert float(model.frame_scale) == pytest.approx(float(frames.std()), abs=1e-6)


def test_reservoir_keeps_the_first_rows_then_a_uniform_sample():
    r = Reservoir(5, seed=0)
    r.add(a=np.arange(3), b=np.arange(3) * 10)
    assert r.rows()["a"].tolist() == [0, 1, 2] and r.rows()["b"].tolist() == [0, 10, 20]  # under the cap: all, in order
    r.add(a=np.arange(3, 100), b=np.arange(3, 100) * 10)
    rows = r.rows()
    assert r.seen == 100 and len(set(rows["a"].tolist())) == 5 and (rows["b"] == rows["a"] * 10).all()  # rows stay whole
    # each of 20 rows is kept with probability 5/20 (over 2000 seeded draws: 0.25 +- 0.01 standard error)
    kept = np.zeros(20)
    for seed in range(2000):
        r = Reservoir(5, seed=seed)
        for start in range(0, 20, 7):
            r.add(a=np.arange(start, min(start + 7, 20)))
        kept[r.rows()["a"]] += 1
    assert np.abs(kept / 2000 - 0.25).max() < 0.05
