"""Image-text retrieval data: Flickr30k / COCO Karpathy-split json + images, and offline captions
built from each easy-VQA image's own question/answer pairs ("a blue circle").

Training items are (image, one of its captions) pairs. Evaluation items are images; the captions
of the split form a text bank (``dataset.texts``) and ``dataset.image_texts[i]`` lists the texts
that describe image i. Relevance (``relevance``): Flickr30k / COCO use the standard protocol, a text
matches only the image it was written for (METER / ViLT ``compute_irtr_recall`` compare image ids),
so the 1,000-image Flickr30k test split has 5,000 texts with 5 relevant each; easy-VQA's captions
match by string, so identical captions of different images count as matches in both directions (it
has only 24 distinct captions).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from .errors import FilePolicy, on_error_policy, present_files

from .vqa import (CLIP_MEAN, CLIP_STD, EASY_VQA_COLOURS, EASY_VQA_MEAN, EASY_VQA_SHAPES, EASY_VQA_STD,
                  check_question, easy_vqa_split, image_transform, load_image, read_easy_vqa, subset)


class RetrievalDataset(Dataset):
    """images[i] with captions[i] (list of str). mode 'pairs' (train) or 'images' (eval).

    unique_texts: the evaluation text bank holds each distinct caption string once. With few distinct
    captions (easy-VQA: 24) a bank with repeats fills the top-K of every image->text ranking with copies
    of one string, so TR@1 = TR@5 = TR@10; without repeats TR@K measures a real ranking.

    relevance: "caption" (an image matches every text equal to one of its captions) or "image" (a text
    matches only its own image, the Flickr30k / COCO protocol; needs ``unique_texts=False``).

    policy (``data.on_error``): unreadable images raise, or are skipped. Training pairs are skipped as
    they are read (the item is None); in "images" mode every image is decoded once up front and the
    unreadable ones leave the split with their captions, since ranking needs the whole split."""

    def __init__(self, images: list[Path], captions: list[list[str]], transform: Callable, mode: str,
                 unique_texts: bool = False, policy: FilePolicy | None = None, relevance: str = "caption") -> None:
        if mode not in ("pairs", "images"):
            raise ValueError(f"mode must be 'pairs' or 'images', got {mode!r}")
        if relevance not in ("caption", "image"):
            raise ValueError(f"relevance must be 'caption' or 'image', got {relevance!r}")
        if relevance == "image" and unique_texts:
            raise ValueError("relevance='image' needs one text per caption (unique_texts=False): a text shared by "
                             "several images cannot belong to one of them")
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
        self.policy = policy or FilePolicy()
        if mode == "images" and self.policy.skip:
            keep = [i for i, p in enumerate(images)
                    if self.policy.call(lambda: load_image(p), f"image {i}") is not None]
            self.policy.summary(len(images), "retrieval images")
            images, captions = [images[i] for i in keep], [captions[i] for i in keep]
        self.images, self.transform, self.mode = images, transform, mode
        self.captions = [[check_question(c, f"captions of {images[i]}") for c in caps] for i, caps in enumerate(captions)]
        self.pairs = [(i, j) for i, caps in enumerate(self.captions) for j in range(len(caps))]
        self.texts = [c for caps in self.captions for c in caps]
        if unique_texts:  # each distinct caption once in the text bank (first-seen order)
            self.texts = list(dict.fromkeys(self.texts))
        self.relevance = relevance
        if relevance == "image":  # text t belongs to the image it was written for, and to no other
            starts = [0]
            for caps in self.captions:
                starts.append(starts[-1] + len(caps))
            self.image_texts = [list(range(a, b)) for a, b in zip(starts, starts[1:])]
            return
        # relevant text ids per image, by caption string (so duplicates across images are matches)
        ids: dict[str, list[int]] = {}
        for t, c in enumerate(self.texts):
            ids.setdefault(c, []).append(t)
        self.image_texts = [sorted({t for c in caps for t in ids[c]}) for caps in self.captions]

    def __len__(self) -> int:
        return len(self.pairs) if self.mode == "pairs" else len(self.images)

    def __getitem__(self, k: int) -> dict[str, Any] | None:
        if self.mode == "pairs":
            i, j = self.pairs[k]
            image = self.policy.call(lambda: self.transform(load_image(self.images[i])), f"pair {k}")
            if image is None:
                return None
            return {"image": image, "question": self.captions[i][j], "image_id": i, "index": k}
        return {"image": self.transform(load_image(self.images[k])), "index": k}


def easy_vqa_captions(qs: list[tuple[str, str, int]]) -> dict[int, str]:
    """'a <colour> <shape>' per image id, from its own QA pairs. A 'what ...' pair names its answer and
    presupposes the colour/shape words of its question ("what color is the triangle?" blue); a yes/no
    question names its colour/shape when affirmed ("is there a red shape?" yes, "is there not a red shape?" no)."""
    colour: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, img in qs:
        words = q.rstrip("?").split()
        named = [w for w in words if w in EASY_VQA_COLOURS or w in EASY_VQA_SHAPES]
        if a in ("yes", "no"):
            if (a == "yes") == ("not" in words or "no" in words):
                continue  # denied: says what the image does not show
        else:
            named.append(a)
        for w in named:
            (shape if w in EASY_VQA_SHAPES else colour)[img] = w
    # Images whose pairs never name both (a few percent) get no caption and are left out of retrieval.
    return {i: f"a {colour[i]} {shape[i]}" for i in sorted(set(colour) & set(shape))}


def build_easy_vqa_captions(cfg: Any, split: str) -> RetrievalDataset:
    """Offline retrieval set: train = the package's train images, val/test = its test images (one caption each)."""
    qs, paths = read_easy_vqa(easy_vqa_split(split), cfg.get("root"))
    caps = easy_vqa_captions(qs)
    ids = subset(sorted(caps), cfg.get("subset_train") if split == "train" else cfg.get("subset_val"),
                 cfg.get("subset_seed"))
    tf = image_transform(int(cfg.img_size), EASY_VQA_MEAN, EASY_VQA_STD, split == "train")
    return RetrievalDataset([paths[i] for i in ids], [[caps[i]] for i in ids], tf,
                            "pairs" if split == "train" else "images", unique_texts=bool(cfg.get("unique_texts")),
                            policy=on_error_policy(cfg))


def _drop_missing_images(imgs: list[Path], caps: list[list[str]], policy: FilePolicy, ann: Path,
                         root: Path) -> tuple[list[Path], list[list[str]]]:
    """The images (with their captions) whose files exist; the missing ones are an error naming how many
    and the first few (raise), or are dropped with one line (skip, unless none would be left)."""
    keep = present_files(imgs, policy,
                         lambda n, total, first: f"{ann}: {n} of {total} images of the split are not in {root} ({first})",
                         "data.image_dir must be the folder of the images (Flickr30k: flickr30k-images/)",
                         "leave them out with their captions", "left out with their captions", where=root)
    return [imgs[i] for i in keep], [caps[i] for i in keep]


def build_karpathy(cfg: Any, split: str) -> RetrievalDataset:
    """Flickr30k / COCO Karpathy json (dataset_flickr30k.json / dataset_coco.json) + data.image_dir.

    Images are ``image_dir/<filepath>/<filename>`` (Flickr30k has no filepath: ``flickr30k-images/<filename>``);
    every listed image is checked to exist when the split is built. Evaluation relevance is by image (each
    text matches only its own image), unless ``data.unique_texts`` merges identical captions into one text."""
    if not cfg.get("ann_file"):
        raise ValueError("data.ann_file is required (Karpathy split json, e.g. dataset_flickr30k.json)")
    ann = Path(cfg.ann_file).expanduser()
    if not ann.is_file():
        raise FileNotFoundError(f"Karpathy json not found: {ann} (data.ann_file)")
    data = json.loads(ann.read_text())
    if "images" not in data:
        raise KeyError(f"{ann}: no 'images' list; is it a Karpathy split json?")
    want = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}[split]
    root = Path(cfg.get("image_dir") or ann.parent).expanduser()
    imgs, caps = [], []
    for im in data["images"]:
        if im.get("split") in want:
            imgs.append(root / im.get("filepath", "") / im["filename"])
            caps.append([s["raw"] for s in im["sentences"]])
    if not imgs:
        raise ValueError(f"{ann}: no images in split {split!r} (expected split values {want})")
    keep = subset(list(range(len(imgs))), cfg.get("subset_train") if split == "train" else cfg.get("subset_val"),
                  cfg.get("subset_seed"))
    policy = on_error_policy(cfg)
    imgs, caps = _drop_missing_images([imgs[i] for i in keep], [caps[i] for i in keep], policy, ann, root)
    tf = image_transform(int(cfg.img_size), CLIP_MEAN, CLIP_STD, split == "train")
    unique = bool(cfg.get("unique_texts"))
    return RetrievalDataset(imgs, caps, tf, "pairs" if split == "train" else "images", unique_texts=unique,
                            policy=policy, relevance="caption" if unique else "image")


RETRIEVAL_DATASETS: dict[str, Callable[[Any, str], RetrievalDataset]] = {
    "easy_vqa_captions": build_easy_vqa_captions, "flickr30k": build_karpathy, "coco_karpathy": build_karpathy}


def build_retrieval_dataset(cfg: Any, split: str) -> RetrievalDataset:
    """data.name -> dataset (easy_vqa_captions | flickr30k | coco_karpathy)."""
    name = cfg.get("name")
    if name not in RETRIEVAL_DATASETS:
        raise ValueError(f"data.name {name!r} is not a retrieval dataset; choose one of {sorted(RETRIEVAL_DATASETS)}")
    return RETRIEVAL_DATASETS[name](cfg, split)


class WithCaptionId(Dataset):
    """Adds caption_id (index of the caption string) to training pairs."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int) -> dict[str, Any] | None:
        item = self.ds[k]
        if item is None:  # an unreadable image skipped under data.on_error=skip
            return None
        item["caption_id"] = self.ds.caption_id[item["question"]]
        return item
