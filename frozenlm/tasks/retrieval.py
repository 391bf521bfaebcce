"""Image-text retrieval (METER + LMLayer): ITC + ITM training; evaluation ranks with the ITM head over
the top-k candidates pre-selected by the cheap ITC similarity (both directions), reporting
IR@1/5/10 (text -> image) and TR@1/5/10 (image -> text) in percent, as the paper names them."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.errors import DropSkipped
from ..data.retrieval import build_retrieval_dataset
from ..engine.task import Task, register_task
from .vl_common import build_vl_model, text_collate, vl_param_groups
from ..config import section
from .vl_common import VL_MODEL_KEYS

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


@register_task("retrieval")
class RetrievalTask(Task):
    """ITC + ITM training on (image, caption) pairs; whole-split ranking at evaluation."""

    primary_metric, primary_mode = "rsum", "max"
    distributed_eval = False  # ranking needs every image and caption of the split in one process
    config_keys = (  # no model.num_answers: retrieval has no answer head
        *VL_MODEL_KEYS,
        *section("data", "name", "root", "ann_file", "image_dir", "img_size", "subset_train", "subset_val",
                 "subset_seed", "unique_texts", "max_text_len", "on_error"),
        *section("retrieval", "k_candidates", "fusion_batch"),
    )

    def __init__(self) -> None:
        self._eval_ds: Any = None
        self._cache: dict[str, Any] = {}

    def build_model(self, cfg: Any) -> nn.Module:
        self._eval_ds, self._cache = None, {}
        return build_vl_model(cfg, 0)

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_retrieval_dataset(cfg.data, split)
        if split == "train":
            caption_ids = {c: i for i, c in enumerate(sorted(set(ds.texts)))}
            ds.caption_id = caption_ids  # identical captions are treated as positives in the losses
        else:
            self._eval_ds = ds
        return _WithCaptionId(ds) if split == "train" else ds

    def collate_fn(self, cfg: Any, split: str) -> Callable:
        return DropSkipped(text_collate(cfg))

    def param_groups(self, model: nn.Module, cfg: Any) -> list[dict]:
        return vl_param_groups(model, cfg)

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        itc, itm = itc_itm_loss(model, batch)
        return itc + itm

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise NotImplementedError("retrieval evaluation ranks the whole split in one process; run it with 1 rank")
        ds = self._eval_ds
        idx = batch["index"]
        if int(idx[0]) == 0 or not self._cache:
            self._cache = {"v": [], "n": 0, **self._encode_texts(model, ds, cfg, batch["images"].device)}
        self._cache["v"].append(model.encode_image(batch["images"]))
        self._cache["n"] += len(idx)
        if self._cache["n"] < len(ds):
            return {}
        return self._rank(model, ds, cfg)

    def _encode_texts(self, model: nn.Module, ds: Any, cfg: Any, device: torch.device) -> dict[str, Tensor]:
        col = text_collate(cfg)
        enc = col.tokenize(ds.texts)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        bs = int(cfg.eval_batch_size or cfg.batch_size)
        t = torch.cat([model.encode_text(ids[i:i + bs], mask[i:i + bs]) for i in range(0, len(ids), bs)])
        return {"t": t, "mask": mask}

    def _rank(self, model: nn.Module, ds: Any, cfg: Any) -> dict[str, Tensor]:
        c = self._cache
        v, t, mask = torch.cat(c["v"]), c["t"], c["mask"]
        self._cache = {}
        ei, et = model.embed(v, t)
        sim = (ei @ et.T).float().cpu()
        k = int((cfg.get("retrieval") or {}).get("k_candidates", 16))
        bs = int((cfg.get("retrieval") or {}).get("fusion_batch", 128))

        def itm(img: Tensor, txt: Tensor) -> Tensor:
            out = []
            for s in range(0, len(img), bs):
                i, j = img[s:s + bs].to(v.device), txt[s:s + bs].to(v.device)
                pooled, _, _ = model.fuse(v[i], t[j], mask[j])
                logit = model.itm_head(pooled).float()
                out.append((logit[:, 1] - logit[:, 0]).cpu())
            return torch.cat(out)

        i2t = rerank(sim, k, itm)
        t2i = rerank(sim.T.contiguous(), k, lambda txt, img: itm(img, txt))
        text_images = [[] for _ in ds.texts]
        for i, rel in enumerate(ds.image_texts):
            for j in rel:
                text_images[j].append(i)
        tr, ir = recall_at_k(i2t, ds.image_texts), recall_at_k(t2i, text_images)
        out = {f"tr{k_}": torch.tensor(float(tr[k_]), dtype=torch.float64) for k_ in KS}
        out.update({f"ir{k_}": torch.tensor(float(ir[k_]), dtype=torch.float64) for k_ in KS})
        out["n_images"] = torch.tensor(float(len(ds.image_texts)), dtype=torch.float64)
        out["n_texts"] = torch.tensor(float(len(ds.texts)), dtype=torch.float64)
        return out

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        if "n_images" not in sums:
            raise ValueError("retrieval evaluation saw no complete split (empty dataset?)")
        ni, nt = float(sums["n_images"]), float(sums["n_texts"])
        out = {f"IR@{k}": 100.0 * float(sums[f"ir{k}"]) / nt for k in KS}
        out.update({f"TR@{k}": 100.0 * float(sums[f"tr{k}"]) / ni for k in KS})
        return {"rsum": sum(out.values()), **out}


class _WithCaptionId(torch.utils.data.Dataset):
    """Adds caption_id (index of the caption string) to training pairs."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = self.ds[k]
        if item is None:  # an unreadable image skipped under data.on_error=skip
            return None
        item["caption_id"] = self.ds.caption_id[item["question"]]
        return item
