"""Image-text retrieval (METER + LMLayer): ITC + ITM training; evaluation ranks with the ITM head over
the top-k candidates pre-selected by the cheap ITC similarity (both directions), reporting
IR@1/5/10 (text -> image) and TR@1/5/10 (image -> text) in percent, as the paper names them."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data.retrieval import WithCaptionId, build_retrieval_dataset
from .base import EvalContext
from .vl_common import VL_MODEL_KEYS, VLTask, build_vl_model, text_collate

KS = (1, 5, 10)


def recall_at_k(scores: Tensor, relevant: Sequence[Sequence[int]], ks: Sequence[int] = KS) -> dict[int, int]:
    """Number of queries (rows of scores, higher = better) with a relevant candidate in their top k."""
    order = scores.argsort(dim=1, descending=True)
    hits = {k: 0 for k in ks}
    for q, rel in enumerate(relevant):
        if not rel:
            raise ValueError(f"query {q} has no relevant candidate")
        pos = torch.isin(order[q], torch.as_tensor(list(rel))).nonzero()[0].item()  # best relevant rank
        for k in ks:
            hits[k] += int(pos < k)
    return hits


def rerank(sim: Tensor, k: int, score_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Final scores: each row's top-k by `sim` get score_fn(rows, cols) (ITM) and rank above the rest,
    which keep their `sim` order."""
    k = min(k, sim.shape[1])
    cols = sim.topk(k, dim=1).indices
    rows = torch.arange(sim.shape[0]).unsqueeze(1).expand_as(cols)
    out = sim - 1e6
    out[rows.reshape(-1), cols.reshape(-1)] = score_fn(rows.reshape(-1), cols.reshape(-1)).to(out.dtype)
    return out


def itc_itm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(ITC InfoNCE over the batch, ITM cross-entropy over positives + one ITC-sampled negative text per image
    and one negative image per text). Pairs with identical captions count as positives."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    v, t = model.encode_image(batch["images"]), model.encode_text(ids, mask)
    ei, et = model.embed(v, t)
    logits = model.logit_scale.exp().clamp(max=100) * ei @ et.T
    cap = batch["caption_id"]
    pos = (cap.unsqueeze(1) == cap.unsqueeze(0)).float()
    itc = 0.5 * (-(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                 - (pos / pos.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
    with torch.no_grad():  # hard negatives, ALBEF-style: sample by similarity, never a positive
        w = logits.float().softmax(1) * (1 - pos) + 1e-8 * (1 - pos)
        neg_t = torch.multinomial(w, 1).squeeze(1) if (1 - pos).sum() > 0 else torch.roll(torch.arange(len(cap)), 1)
        neg_i = torch.multinomial(w.T.contiguous(), 1).squeeze(1) if (1 - pos).sum() > 0 else neg_t
    b = len(cap)
    ar = torch.arange(b, device=cap.device)
    vi = torch.cat([v, v, v[neg_i]])
    ti = torch.cat([ar, neg_t, ar])
    pooled, _, _ = model.fuse(vi, t[ti], mask[ti])
    labels = torch.cat([pos[ar, ar], pos[ar, neg_t], pos[neg_i, ar]]).long()
    itm = F.cross_entropy(model.itm_head(pooled).float(), labels)
    return itc, itm


def spread(fn: Callable[[int, int], Tensor], n: int, bs: int, ctx: EvalContext) -> Tensor:
    """``fn(start, stop)`` over the chunks [0, bs), [bs, 2 bs) ... of ``n`` items, chunk c computed on rank
    c % world_size; every rank returns all chunks' results, in order (the same chunks as one process)."""
    starts = list(range(0, n, bs))
    mine = [fn(s, min(s + bs, n)) for s in starts[ctx.rank::ctx.world_size]]
    parts = ctx.gather(torch.cat(mine) if mine else torch.zeros(0, device=ctx.device))
    sizes = [[min(bs, n - s) for s in starts[r::ctx.world_size]] for r in range(ctx.world_size)]
    chunks = [list(p.split(z)) if z else [] for p, z in zip(parts, sizes)]
    return torch.cat([chunks[c % ctx.world_size][c // ctx.world_size] for c in range(len(starts))])


class RetrievalTask(VLTask):
    """ITC + ITM training on (image, caption) pairs; whole-split ranking at evaluation, on any number of ranks."""

    primary_metric, primary_mode = "rsum", "max"
    config_keys = (  # no model.num_answers: retrieval has no answer head
        *VL_MODEL_KEYS,
        *section("data", "name", "root", "ann_file", "image_dir", "img_size", "subset_train", "subset_val",
                 "subset_seed", "unique_texts", "max_text_len", "on_error"),
        *section("retrieval", "k_candidates", "fusion_batch"),
    )

    def build_model(self, cfg: Any) -> nn.Module:
        return build_vl_model(cfg, 0)

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_retrieval_dataset(cfg.data, split)
        if split != "train":
            return ds
        ds.caption_id = {c: i for i, c in enumerate(sorted(set(ds.texts)))}  # identical captions: positives
        return WithCaptionId(ds)

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        itc, itm = itc_itm_loss(model, batch)
        return itc + itm

    def evaluate(self, model: nn.Module, batches: Iterable[Any], cfg: Any, ctx: EvalContext) -> dict[str, float]:
        """IR@k / TR@k and their sum ``rsum`` over the whole split. Each rank encodes its share of the images;
        the image tokens are gathered, every rank encodes the text bank, and the ITM re-scoring of the ITC
        top-k candidates is spread over the ranks."""
        ds = ctx.dataset
        n = len(ds.image_texts)
        if n == 0 or n < ctx.world_size:
            raise ValueError(f"retrieval evaluation needs an image per rank; the split has {n} for {ctx.world_size}")
        index, feats = [], []
        for b in batches:
            index.append(b["index"])
            feats.append(model.encode_image(b["images"]))
        index = torch.cat(ctx.gather(torch.cat(index)))
        if sorted(index.tolist()) != list(range(n)):
            raise ValueError(f"retrieval evaluation saw {len(index)} images, not each of the split's {n} once")
        v = torch.cat(ctx.gather(torch.cat(feats)))[index.argsort()]
        t, mask = self._encode_texts(model, ds, cfg, ctx.device)
        ei, et = model.embed(v, t)
        sim = (ei @ et.T).float().cpu()
        k = int((cfg.get("retrieval") or {}).get("k_candidates", 16))
        bs = int((cfg.get("retrieval") or {}).get("fusion_batch", 128))

        def itm(img: Tensor, txt: Tensor) -> Tensor:
            def score(s: int, e: int) -> Tensor:
                i, j = img[s:e].to(v.device), txt[s:e].to(v.device)
                pooled, _, _ = model.fuse(v[i], t[j], mask[j])
                logit = model.itm_head(pooled).float()
                return logit[:, 1] - logit[:, 0]
            return spread(score, len(img), bs, ctx).cpu()

        i2t = rerank(sim, k, itm)
        t2i = rerank(sim.T.contiguous(), k, lambda txt, img: itm(img, txt))
        text_images: list[list[int]] = [[] for _ in ds.texts]
        for i, rel in enumerate(ds.image_texts):
            for j in rel:
                text_images[j].append(i)
        tr, ir = recall_at_k(i2t, ds.image_texts), recall_at_k(t2i, text_images)
        out = {f"IR@{k_}": 100.0 * ir[k_] / len(ds.texts) for k_ in KS}
        out.update({f"TR@{k_}": 100.0 * tr[k_] / n for k_ in KS})
        return {"rsum": sum(out.values()), **out}

    def _encode_texts(self, model: nn.Module, ds: Any, cfg: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        enc = text_collate(cfg).tokenize(ds.texts)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        bs = int(cfg.eval_batch_size or cfg.batch_size)
        return torch.cat([model.encode_text(ids[i:i + bs], mask[i:i + bs]) for i in range(0, len(ids), bs)]), mask
