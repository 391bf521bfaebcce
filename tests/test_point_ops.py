"""Point ops: FPS, kNN, ball query and grouping against brute-force references."""
from __future__ import annotations

import itertools

import pytest
import torch

from frozenlm.ops.points import (ball_query, farthest_point_sample, fps_knn_group, gather_points, group_points,
                                       knn)


def brute_fps(pts: torch.Tensor, m: int, first: int) -> list[int]:
    """Textbook FPS on one cloud with Python loops."""
    chosen = [first]
    for _ in range(m - 1):
        best, best_d = -1, -1.0
        for j in range(len(pts)):
            d = min(float(((pts[j] - pts[c]) ** 2).sum()) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("start", ["first", 3, "centroid"])
def test_fps_matches_brute_force(start) -> None:
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(3, 40, 3, generator=g)
    idx = farthest_point_sample(xyz, 12, start=start)
    assert idx.shape == (3, 12) and idx.dtype == torch.long
    for b in range(3):
        if start == "centroid":
            first = int((xyz[b] - xyz[b].mean(0)).norm(dim=-1).argmax())
        else:
            first = 0 if start == "first" else start
        assert idx[b].tolist() == brute_fps(xyz[b], 12, first)


def test_fps_distinct_and_covering() -> None:
    g = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 500, 3, generator=g)
    m = 32
    idx = farthest_point_sample(xyz, m, start="random", generator=torch.Generator().manual_seed(5))
    for b in range(2):
        assert len(set(idx[b].tolist())) == m
        sel = xyz[b, idx[b]]
        # covering radius: the farthest any point is from the selection
        cover = torch.cdist(xyz[b], sel).min(1).values.max()
        # FPS is a 2-approximation of k-center: the covering radius is at most the smallest
        # pairwise distance among the selection plus the next pick (Gonzalez' bound)
        pair = torch.cdist(sel, sel) + torch.eye(m) * 1e9
        assert cover <= pair.min() + 1e-6
        # and much better than a random subset of the same size
        rnd = xyz[b, torch.randperm(500, generator=g)[:m]]
        assert cover < torch.cdist(xyz[b], rnd).min(1).values.max()


def test_fps_all_points_and_errors() -> None:
    xyz = torch.randn(1, 7, 3)
    assert sorted(farthest_point_sample(xyz, 7)[0].tolist()) == list(range(7))
    with pytest.raises(ValueError, match="n_samples"):
        farthest_point_sample(xyz, 8)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(xyz, 2, start="middle")
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        farthest_point_sample(torch.randn(7, 3), 2)


def test_fps_centroid_start_is_permutation_equivariant() -> None:
    xyz = torch.randn(2, 100, 3)
    perm = torch.randperm(100)
    a = xyz.gather(1, farthest_point_sample(xyz, 16, "centroid").unsqueeze(-1).expand(-1, -1, 3))
    xp = xyz[:, perm]
    b = xp.gather(1, farthest_point_sample(xp, 16, "centroid").unsqueeze(-1).expand(-1, -1, 3))
    torch.testing.assert_close(a, b)


def test_knn_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(2)
    q, r = torch.randn(2, 9, 3, generator=g), torch.randn(2, 30, 3, generator=g)
    dist, idx = knn(q, r, 5)
    assert dist.shape == idx.shape == (2, 9, 5)
    for b, i in itertools.product(range(2), range(9)):
        d = [(float((q[b, i] - r[b, j]).norm()), j) for j in range(30)]
        ref = sorted(d)[:5]
        assert idx[b, i].tolist() == [j for _, j in ref]
        torch.testing.assert_close(dist[b, i], torch.tensor([x for x, _ in ref]))
    with pytest.raises(ValueError, match="k must be"):
        knn(q, r, 31)


def test_ball_query_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    q, r = torch.rand(1, 6, 3, generator=g), torch.rand(1, 50, 3, generator=g)
    q[0, 5] = 10.0  # no neighbour in the ball: falls back to the nearest point
    idx = ball_query(q, r, 0.3, 4)
    for i in range(6):
        inside = [j for j in range(50) if float((q[0, i] - r[0, j]).norm()) <= 0.3][:4]
        if not inside:
            inside = [int((r[0] - q[0, i]).norm(dim=-1).argmin())]
        expect = inside + [inside[0]] * (4 - len(inside))
        assert idx[0, i].tolist() == expect


def test_gather_and_group_points() -> None:
    xyz = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    feats = -xyz[..., :2]
    idx = torch.tensor([[[0, 4], [1, 1]], [[2, 3], [0, 0]]])
    g = gather_points(xyz, idx)
    assert g.shape == (2, 2, 2, 3)
    assert torch.equal(g[1, 0, 1], xyz[1, 3])
    centers = xyz[:, :2]
    grp = group_points(xyz, centers, idx, feats)
    assert grp.shape == (2, 2, 2, 5)
    assert torch.equal(grp[0, 0, 1, :3], xyz[0, 4] - xyz[0, 0])
    assert torch.equal(grp[0, 0, 1, 3:], feats[0, 4])


def test_fps_knn_group_shapes_and_centring() -> None:
    xyz = torch.randn(2, 128, 3, requires_grad=True)
    nb, center = fps_knn_group(xyz, 8, 16)
    assert nb.shape == (2, 8, 16, 3) and center.shape == (2, 8, 3)
    # each centre is its own nearest neighbour: the first offset is zero
    assert torch.allclose(nb[:, :, 0], torch.zeros(2, 8, 3))
    assert (nb.norm(dim=-1)[:, :, 1:] >= nb.norm(dim=-1)[:, :, :-1] - 1e-6).all()
    nb.sum().backward()  # gradients reach the input coordinates
    assert xyz.grad is not None
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        fps_knn_group(torch.randn(2, 128, 6), 8, 16)
