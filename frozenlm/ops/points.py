"""Point-cloud primitives in plain PyTorch (CPU and GPU alike, no compiled extensions).

Shapes: ``xyz`` is (B, N, 3) (any trailing channel count C works where noted), indices are
int64. Every function is batched and deterministic unless it takes a ``generator``.

- :func:`farthest_point_sample`  FPS indices (B, M)
- :func:`gather_points`           pick points/features by index, any index shape
- :func:`knn`                     k nearest neighbours (torch.cdist + topk), sorted by distance
- :func:`ball_query`              neighbours within a radius (PointNet++ / VoteNet style)
- :func:`group_points`            gather neighbourhoods and centre them on their centres
- :func:`fps_knn_group`           Point-BERT's ``Group``: FPS centres + kNN neighbourhoods
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["FPS_STARTS", "farthest_point_sample", "gather_points", "knn", "ball_query", "group_points",
           "fps_knn_group"]

#: ``start`` options of :func:`farthest_point_sample`.
FPS_STARTS = ("first", "random", "centroid")


def _check_points(xyz: Tensor, name: str = "xyz") -> None:
    if xyz.ndim != 3 or xyz.shape[-1] < 1:
        raise ValueError(f"{name} must be (B, N, C) points, got shape {tuple(xyz.shape)}")
    if xyz.shape[1] == 0:
        raise ValueError(f"{name} has no points (shape {tuple(xyz.shape)})")


def farthest_point_sample(xyz: Tensor, n_samples: int, start: Union[str, int, Tensor] = "first",
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """Indices (B, n_samples) of iterative farthest point sampling.

    Each new point is the one whose distance to the already chosen set is largest (ties go to the
    lowest index, so results are deterministic). ``start`` picks the first point:

    - ``"first"``: index 0, as the PointNet++ CUDA kernel that Point-BERT uses;
    - ``"random"``: uniform per cloud, drawn from ``generator``;
    - ``"centroid"``: the point farthest from the cloud's centroid; with it the chosen *set* does
      not depend on the order of the input points (permutation equivariant, ties aside);
    - an int, or a (B,) tensor of per-cloud start indices.

    Returned indices are distinct when ``n_samples <= N``.
    """
    _check_points(xyz)
    b, n, _ = xyz.shape
    if not 0 < n_samples <= n:
        raise ValueError(f"farthest_point_sample: n_samples must be in [1, {n}] for clouds of {n} points, "
                         f"got {n_samples}")
    pts = xyz.detach().float()
    if isinstance(start, Tensor):
        first = start.to(device=xyz.device, dtype=torch.long).expand(b).clone()
    elif isinstance(start, int):
        if not -n <= start < n:
            raise ValueError(f"farthest_point_sample: start index {start} out of range for {n} points")
        first = torch.full((b,), start % n, dtype=torch.long, device=xyz.device)
    elif start == "first":
        first = torch.zeros(b, dtype=torch.long, device=xyz.device)
    elif start == "random":
        first = torch.randint(n, (b,), generator=generator, device="cpu" if generator is None else generator.device)
        first = first.to(xyz.device)
    elif start == "centroid":
        first = (pts - pts.mean(1, keepdim=True)).square().sum(-1).argmax(-1)
    else:
        raise ValueError(f"farthest_point_sample: start must be one of {FPS_STARTS}, an int or a tensor, "
                         f"got {start!r}")
    # One contiguous (B, N) plane per channel and preallocated buffers: ~3x faster than a (B, N, C)
    # difference per step. The sum is ((d0^2 + d1^2) + d2^2) in float32, the order numpy's
    # np.sum((xyz - c) ** 2, -1) uses (Point-BERT's reference FPS), so both pick the same points.
    cols = [pts[..., k].contiguous() for k in range(pts.shape[-1])]
    out = torch.empty(b, n_samples, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device)
    d, t = torch.empty(b, n, device=xyz.device), torch.empty(b, n, device=xyz.device)
    cur = first.view(b, 1)
    for i in range(n_samples):
        out[:, i:i + 1] = cur
        for k, col in enumerate(cols):
            torch.sub(col, col.gather(1, cur), out=t)
            if k == 0:
                torch.mul(t, t, out=d)
            else:
                d.add_(t.mul_(t))
        torch.minimum(dist, d, out=dist)
        cur = dist.argmax(-1, keepdim=True)  # chosen points have distance 0, so they are never picked again
    return out


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """points (B, N, C), idx (B, ...) int -> (B, ..., C): ``out[b, ...] = points[b, idx[b, ...]]``."""
    _check_points(points, "points")
    if idx.shape[0] != points.shape[0]:
        raise ValueError(f"gather_points: batch sizes differ: points {tuple(points.shape)}, idx {tuple(idx.shape)}")
    b, _, c = points.shape
    flat = idx.reshape(b, -1)
    out = points.gather(1, flat.unsqueeze(-1).expand(-1, -1, c))
    return out.reshape(*idx.shape, c)


def knn(query: Tensor, ref: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k nearest ``ref`` points of every ``query`` point: (distances (B, M, k), indices (B, M, k)),
    both sorted by increasing Euclidean distance. query (B, M, C), ref (B, N, C), k <= N."""
    _check_points(query, "query")
    _check_points(ref, "ref")
    if query.shape[0] != ref.shape[0] or query.shape[-1] != ref.shape[-1]:
        raise ValueError(f"knn: query {tuple(query.shape)} and ref {tuple(ref.shape)} must share batch and channels")
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f"knn: k must be in [1, {ref.shape[1]}] (the number of reference points), got {k}")
    # cdist's matmul shortcut loses precision for near points; the direct form is exact enough
    d = torch.cdist(query.float(), ref.float(), compute_mode="donot_use_mm_for_euclid_dist")
    dist, idx = d.topk(k, dim=-1, largest=False, sorted=True)
    return dist, idx


def ball_query(query: Tensor, ref: Tensor, radius: float, k: int) -> Tensor:
    """Indices (B, M, k) of up to k ``ref`` points within ``radius`` of each query point, in index
    order (as PointNet++'s kernel); slots beyond the found count repeat the first hit. A query with
    no neighbour in the ball gets its nearest point."""
    _check_points(query, "query")
    _check_points(ref, "ref")
    n = ref.shape[1]
    if not 0 < k <= n:
        raise ValueError(f"ball_query: k must be in [1, {n}], got {k}")
    d = torch.cdist(query.float(), ref.float(), compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.arange(n, device=ref.device).expand_as(d)
    key = torch.where(d <= radius, order, order + n)  # hits sort first, in index order
    idx = key.topk(k, dim=-1, largest=False, sorted=True).indices
    hit = d.gather(-1, idx) <= radius
    first = torch.where(hit[..., :1], idx[..., :1], d.argmin(-1, keepdim=True))
    return torch.where(hit, idx, first)


def group_points(xyz: Tensor, centers: Tensor, idx: Tensor, features: Optional[Tensor] = None) -> Tensor:
    """Neighbourhoods (B, M, k, 3 [+ C]) of ``centers`` (B, M, 3): ``xyz[idx] - center``, with the
    gathered ``features`` (B, N, C) appended uncentred when given."""
    if idx.ndim != 3 or idx.shape[:2] != centers.shape[:2]:
        raise ValueError(f"group_points: idx must be (B, M, k) matching centers {tuple(centers.shape)}, "
                         f"got {tuple(idx.shape)}")
    grouped = gather_points(xyz, idx) - centers.unsqueeze(2)
    if features is not None:
        grouped = torch.cat([grouped, gather_points(features, idx)], dim=-1)
    return grouped


def fps_knn_group(xyz: Tensor, num_group: int, group_size: int, start: Union[str, int, Tensor] = "first",
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Point-BERT's grouping: ``num_group`` FPS centres and each centre's ``group_size`` nearest
    points, centred. Returns (neighborhood (B, G, S, 3), center (B, G, 3))."""
    _check_points(xyz)
    if xyz.shape[-1] != 3:
        raise ValueError(f"fps_knn_group expects xyz coordinates (B, N, 3), got shape {tuple(xyz.shape)}")
    center = gather_points(xyz, farthest_point_sample(xyz, num_group, start, generator))
    _, idx = knn(center, xyz, group_size)
    return group_points(xyz, center, idx), center
