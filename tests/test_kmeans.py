"""k-means++ seeding and Lloyd iterations for codebook init."""
from __future__ import annotations

import torch

from pipeline.kmeans import kmeans, kmeans_plus_plus, lloyd_step


def test_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centers[torch.arange(400) % 4] + 0.1 * torch.randn(400, 2, generator=g))
    res = kmeans(x, 4, iters=10, seed=1)
    found = sorted(map(tuple, res.centers.round().tolist()))
    assert found == sorted(map(tuple, centers.tolist()))
    assert res.inertia < 0.05 and res.empty_fraction == 0.0
    assert res.inertia_history[-1] <= res.inertia_history[0] + 1e-9


def test_plus_plus_picks_distinct_points_and_is_seeded():
    x = torch.randn(300, 3)
    a = kmeans_plus_plus(x, 20, torch.Generator().manual_seed(5))
    b = kmeans_plus_plus(x, 20, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.unique(a, dim=0).shape[0] == 20


def test_lloyd_step_is_the_mean_of_assigned_points():
    x = torch.tensor([[0.0], [1.0], [9.0], [11.0]])
    c = torch.tensor([[0.0], [10.0]])
    new, counts, inertia = lloyd_step(x, c)
    assert new.flatten().tolist() == [0.5, 10.0]
    assert counts.tolist() == [2.0, 2.0]
    assert inertia.item() == (0 + 1 + 1 + 1) / 4


def test_empty_cluster_is_reseeded_at_worst_point():
    x = torch.tensor([[0.0], [0.1], [5.0]])
    c = torch.tensor([[0.0], [100.0]])   # the second centre gets no point
    new, counts, _ = lloyd_step(x, c)
    assert counts.tolist() == [3.0, 0.0]
    assert new[1].item() == 5.0
