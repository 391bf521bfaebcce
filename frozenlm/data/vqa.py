"""VQA data: the official VQAv2 answer normalisation and accuracy, VQAv2 (json + COCO images) and
the offline easy-VQA set shipped on PyPI (`easy-vqa`, installed with --no-deps).

Every item is a dict: image (3, H, W) float tensor, question str, target (n_answers) soft scores
min(#annotators giving the answer / 3, 1) for training, score (n_answers) the official VQA
accuracy each candidate answer would get (so accuracy = score[argmax logits]), index int.
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .cache import cache_key, load_or_build
from .errors import FilePolicy, on_error_policy, read_image

# --- official VQA evaluation normalisation (github.com/GT-Vision-Lab/VQA, vqaEval.py) ---------
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official regex, kept for identical results
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation: punctuation, number words -> digits, articles, contractions."""
    a = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(a))


def vqa_accuracy(pred: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer: the mean over the 10 leave-one-out subsets of the
    annotators' answers of min(#matches / 3, 1). Both sides are normalised."""
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    p = normalize_answer(pred)
    gts = [normalize_answer(g) for g in gt_answers]
    if len(gts) == 1:
        return float(p == gts[0])  # single-answer sets (easy-VQA): exact match
    accs = [min(1.0, sum(g == p for j, g in enumerate(gts) if j != i) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)


def soft_scores(gt_answers: Sequence[str], answer_to_idx: dict[str, int]) -> Tensor:
    """Training targets: min(#annotators who gave the answer / 3, 1) per vocabulary answer (normalised);
    answers outside the vocabulary are dropped, as in VQAv2 practice."""
    t = torch.zeros(len(answer_to_idx))
    for a, n in Counter(normalize_answer(g) for g in gt_answers).items():
        if a in answer_to_idx:
            t[answer_to_idx[a]] = min(n / 3.0, 1.0)
    return t


def accuracy_scores(gt_answers: Sequence[str], vocab: Sequence[str]) -> Tensor:
    """Official accuracy each vocabulary answer would score; only answers given by an annotator can be > 0."""
    s = torch.zeros(len(vocab))
    given = {normalize_answer(g) for g in gt_answers}
    for i, a in enumerate(vocab):
        if a in given:
            s[i] = vqa_accuracy(a, gt_answers)
    return s


def answer_vocab(annotations: Sequence[Sequence[str]], top_k: int = 3129, min_count: int = 9) -> list[str]:
    """The VQAv2 answer vocabulary: normalised answers given >= min_count times, most frequent first."""
    c = Counter(normalize_answer(a) for answers in annotations for a in answers)
    return [a for a, n in c.most_common(top_k) if n >= min_count]


# --- images ----------------------------------------------------------------------------------
def image_transform(img_size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> Callable:
    """Resize to a square, (train) horizontal flips are NOT used: they swap left/right in questions."""
    from torchvision import transforms as T
    return T.Compose([T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(mean, std)])


def load_image(path: str | Path) -> Image.Image:
    """RGB PIL image; a missing file names itself and what to check, an unreadable one is a
    :class:`~frozenlm.data.errors.DataFileError` (see ``data.on_error``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p} (check data.root / data.image_dir)")
    return read_image(p)


def check_question(q: Any, where: str) -> str:
    """A question must be a non-empty string."""
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"empty or non-string question {q!r} at {where}")
    return q.strip()


# Answer types scored separately, as the official VQAv2 evaluation does (its annotations carry the type);
# easy-VQA's are read off the answer. Fixed per dataset so every rank reports the same keys.
ANSWER_TYPES: dict[str, tuple[str, ...]] = {"vqav2": ("yes/no", "number", "other"),
                                            "easy_vqa": ("yes/no", "color", "shape")}


class VQADataset(Dataset):
    """(image path, question, ground-truth answers[, answer_type]) records -> items for the vqa task."""

    def __init__(self, records: list[dict[str, Any]], vocab: Sequence[str], transform: Callable,
                 strict_answers: bool = False, answer_types: Sequence[str] = (),
                 policy: FilePolicy | None = None) -> None:
        self.records, self.vocab, self.transform = records, list(vocab), transform
        self.policy = policy or FilePolicy()  # unreadable images: raise, or skip (item None)
        self.answer_to_idx = {a: i for i, a in enumerate(self.vocab)}
        self.answer_types = list(answer_types)
        type_idx = {t: k for k, t in enumerate(self.answer_types)}
        for i, r in enumerate(records):
            r["question"] = check_question(r.get("question"), f"record {i} ({r.get('image')})")
            # -1 = not scored per type (no type given, or one outside the dataset's list)
            r["answer_type_idx"] = type_idx.get(r.get("answer_type"), -1)
            if strict_answers:
                bad = [a for a in r["answers"] if normalize_answer(a) not in self.answer_to_idx]
                if bad:
                    raise KeyError(f"record {i}: answer {bad[0]!r} is not in the answer vocabulary "
                                   f"({len(self.vocab)} answers: {self.vocab[:13]}...)")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        r = self.records[i]
        image = self.policy.call(lambda: self.transform(load_image(r["image"])), f"record {i}")
        if image is None:
            return None
        return {"image": image, "question": r["question"],
                "target": soft_scores(r["answers"], self.answer_to_idx),
                "score": accuracy_scores(r["answers"], self.vocab), "index": i,
                "answer_type": r["answer_type_idx"]}


# --- easy-VQA (offline) -----------------------------------------------------------------------
EASY_VQA_MEAN = EASY_VQA_STD = (0.5, 0.5, 0.5)
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")


def easy_vqa_answer_type(answer: str) -> str:
    """yes/no, shape or color (easy-VQA's other answers are its 8 colour names)."""
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in EASY_VQA_SHAPES else "color"


def easy_vqa_root() -> Path:
    """The `data/` folder inside the installed easy_vqa package (found without importing it)."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("easy-VQA is not installed: pip install --no-deps easy-vqa==1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_easy_vqa(split: str, root: str | Path | None = None) -> tuple[list[tuple[str, str, int]], dict[int, Path]]:
    """([(question, answer, image_id)], {image_id: png path}) of the package's 'train' or 'test' split."""
    if split not in ("train", "test"):
        raise ValueError(f"easy-VQA has splits 'train' and 'test', not {split!r}")
    d = Path(root) if root else easy_vqa_root()
    qfile = d / split / "questions.json"
    if not qfile.is_file():
        raise FileNotFoundError(f"easy-VQA questions not found: {qfile}")
    qs = [tuple(q) for q in json.loads(qfile.read_text())]
    images = {int(p.stem): p for p in (d / split / "images").glob("*.png")}
    return qs, images  # type: ignore[return-value]


def easy_vqa_answers(root: str | Path | None = None) -> list[str]:
    """The 13 answers of easy-VQA, in the package's order."""
    d = Path(root) if root else easy_vqa_root()
    return [a.strip() for a in (d / "answers.txt").read_text().splitlines() if a.strip()]


def easy_vqa_split(split: str) -> str:
    """frozenlm split -> package split. easy-VQA ships train (4,000 images) and test (1,000): val = test."""
    if split == "train":
        return "train"
    if split in ("val", "test"):
        return "test"
    raise ValueError(f"unknown split {split!r} (train | val | test)")


def subset(items: list, n: int | None, seed: int | None) -> list:
    """The first n items, or a seeded random n of them."""
    if not n or n >= len(items):
        return items
    if seed is None:
        return items[:n]
    g = torch.Generator().manual_seed(int(seed))
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:n].tolist())]


def build_easy_vqa(cfg: Any, split: str) -> VQADataset:
    """easy-VQA questions as VQA records with 10 identical answers (unknown answers are an error)."""
    qs, images = read_easy_vqa(easy_vqa_split(split), cfg.get("root"))
    records = []
    for q, a, img_id in qs:
        if img_id not in images:
            raise FileNotFoundError(f"easy-VQA image {img_id}.png referenced by {q!r} is missing")
        # One answer per question: counted as 10 agreeing annotators, the VQAv2 convention, so the soft
        # target and the official accuracy of the right answer are both 1.
        records.append({"image": images[img_id], "question": q, "answers": [a] * 10,
                        "answer_type": easy_vqa_answer_type(a)})
    n = cfg.get("subset_train") if split == "train" else cfg.get("subset_val")
    records = subset(records, n, cfg.get("subset_seed"))
    tf = image_transform(int(cfg.img_size), EASY_VQA_MEAN, EASY_VQA_STD, split == "train")
    return VQADataset(records, easy_vqa_answers(cfg.get("root")), tf, strict_answers=True,
                      answer_types=ANSWER_TYPES["easy_vqa"], policy=on_error_policy(cfg))


# --- VQAv2 ------------------------------------------------------------------------------------
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VQAV2_FILES = {  # split -> (questions json, annotations json, COCO image folder)
    "train": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json", "train2014"),
    "val": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014"),
}


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (set data.root to the folder with the VQAv2 files)")
    return json.loads(path.read_text())


def read_vqav2(root: str | Path, split: str) -> list[dict[str, Any]]:
    """VQAv2 records {image, question, answers (10)} joined on question_id."""
    if split not in VQAV2_FILES:
        raise ValueError(f"VQAv2 split must be one of {list(VQAV2_FILES)}, got {split!r}")
    root = Path(root).expanduser()
    qf, af, img_dir = VQAV2_FILES[split]
    qs = _read_json(root / qf, "VQAv2 questions")["questions"]
    anns = {a["question_id"]: a for a in _read_json(root / af, "VQAv2 annotations")["annotations"]}
    out = []
    for q in qs:
        a = anns.get(q["question_id"])
        if a is None:
            raise KeyError(f"{root / af}: no annotation for question_id {q['question_id']}")
        name = f"COCO_{img_dir}_{q['image_id']:012d}.jpg"
        out.append({"image": root / img_dir / name, "question": q["question"],
                    "answers": [x["answer"] for x in a["answers"]], "answer_type": a.get("answer_type")})
    return out


def vqav2_vocab(cfg: Any) -> list[str]:
    """The answer vocabulary: ``data.vocab_file`` when set (a fixed file, written once if missing, then
    read as is), else built from the training annotations and cached as
    ``<root>/frozenlm_answer_vocab_<key>.json``, the key covering the annotation file (name, size,
    mtime), ``data.num_answers`` and ``data.min_answer_count``."""
    root = Path(cfg.root).expanduser()
    top_k, min_count = int(cfg.get("num_answers") or 3129), int(cfg.get("min_answer_count") or 9)
    if cfg.get("vocab_file"):
        path = Path(cfg.vocab_file).expanduser()
    else:
        ann = root / VQAV2_FILES["train"][1]
        if not ann.is_file():
            raise FileNotFoundError(f"VQAv2 annotations not found: {ann} (set data.root to the folder with the "
                                    "VQAv2 files)")
        key = cache_key({"what": "vqav2_answer_vocab", "version": 1, "num_answers": top_k, "min_count": min_count},
                        [ann], root)
        path = root / f"frozenlm_answer_vocab_{key}.json"
    def build() -> list[str]:
        return answer_vocab([r["answers"] for r in read_vqav2(root, "train")], top_k, min_count)

    return load_or_build(path, build, lambda vocab, tmp: tmp.write_text(json.dumps(vocab)),
                         lambda p: json.loads(p.read_text()))


def build_vqav2(cfg: Any, split: str) -> VQADataset:
    """VQAv2 with the answer vocabulary of :func:`vqav2_vocab`."""
    if not cfg.get("root"):
        raise ValueError("data.root is required for VQAv2 (folder with the question/annotation json files "
                         "and the COCO train2014/val2014 image folders)")
    vocab = vqav2_vocab(cfg)
    records = read_vqav2(cfg.root, "train" if split == "train" else "val")
    n = cfg.get("subset_train") if split == "train" else cfg.get("subset_val")
    tf = image_transform(int(cfg.img_size), CLIP_MEAN, CLIP_STD, split == "train")
    return VQADataset(subset(records, n, cfg.get("subset_seed")), vocab, tf, answer_types=ANSWER_TYPES["vqav2"],
                      policy=on_error_policy(cfg))


VQA_DATASETS: dict[str, Callable[[Any, str], VQADataset]] = {"easy_vqa": build_easy_vqa, "vqav2": build_vqav2}


def build_vqa_dataset(cfg: Any, split: str) -> VQADataset:
    """data.name -> dataset (easy_vqa | vqav2)."""
    name = cfg.get("name")
    if name not in VQA_DATASETS:
        raise ValueError(f"data.name {name!r} is not a VQA dataset; choose one of {sorted(VQA_DATASETS)}")
    return VQA_DATASETS[name](cfg, split)
