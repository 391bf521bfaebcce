"""VQA data: the official VQAv2 answer normalisation and accuracy, VQAv2 as released (question and
annotation json + COCO images; the unannotated test-dev / test splits and the evaluation server's
results file) and the offline easy-VQA set shipped on PyPI (`easy-vqa`, installed with --no-deps).

Every item is a dict: image (3, H, W) float tensor, question str, index int and, on a split with
answers, target (n_answers) training soft scores (the rule of ``data.answer_vocab``, see
:func:`vqav2_vocab`), score (n_answers) the official VQA accuracy each candidate answer would get
(so accuracy = score[argmax logits]) and answer_type int.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .cache import atomic_write, cache_key, load_or_build
from .errors import DataFileError, FilePolicy, on_error_policy, read_image

def _is_main() -> bool:
    """Rank 0 (or no torchrun): the process that prints and writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


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


def meter_score(count: int) -> float:
    """METER's soft score for an answer given by ``count`` annotators: 0 / 0.3 / 0.6 / 0.9 / 1.0 for
    0 / 1 / 2 / 3 / >= 4 (``get_score`` of ViLT's and METER's ``write_vqa.py``)."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def meter_soft_scores(gt_answers: Sequence[str], answer_to_idx: dict[str, int]) -> Tensor:
    """METER's training targets: :func:`meter_score` of each vocabulary answer's count. As in METER's
    ``write_vqa.py`` the annotators' answers are counted as written, NOT normalised (only the vocabulary
    is), so "two" does not count towards the vocabulary answer "2"."""
    t = torch.zeros(len(answer_to_idx))
    for a, n in Counter(gt_answers).items():
        if a in answer_to_idx:
            t[answer_to_idx[a]] = meter_score(n)
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
    """The ``all_answers`` vocabulary: every annotator's normalised answer (all 10 per question, of the
    questions given), kept when given >= min_count times, the top_k most frequent, most frequent first."""
    c = Counter(normalize_answer(a) for answers in annotations for a in answers)
    return [a for a, n in c.most_common(top_k) if n >= min_count]


def meter_answer_vocab(major_answers: Iterable[str], min_count: int = 9, top_k: Optional[int] = None) -> list[str]:
    """The ``meter`` vocabulary (METER's and ViLT's ``write_vqa.py``): each question's normalised
    ``multiple_choice_answer`` (one per question, train + val), kept when it is the answer of >= min_count
    questions, in first-seen order, which gives METER's label ids. ``top_k`` (not in METER) keeps only the
    top_k most frequent of those, still in first-seen order."""
    c = Counter(normalize_answer(a) for a in major_answers)  # a Counter keeps first-seen order
    kept = [a for a, n in c.items() if n >= min_count]
    if top_k is not None and len(kept) > top_k:
        top = set(sorted(kept, key=lambda a: -c[a])[:top_k])  # stable sort: ties go to the first seen
        kept = [a for a in kept if a in top]
    return kept


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
    """(image path, question, ground-truth answers[, answer_type]) records -> items for the vqa task.

    ``targets`` turns a record's answers into the training soft scores (:func:`soft_scores`, the
    ``all_answers`` rule, or :func:`meter_soft_scores`). ``labelled=False`` (test-dev, test: no public
    answers) gives items without target / score / answer_type."""

    def __init__(self, records: list[dict[str, Any]], vocab: Sequence[str], transform: Callable,
                 strict_answers: bool = False, answer_types: Sequence[str] = (),
                 policy: FilePolicy | None = None,
                 targets: Callable[[Sequence[str], dict[str, int]], Tensor] = soft_scores,
                 labelled: bool = True) -> None:
        self.records, self.vocab, self.transform = records, list(vocab), transform
        self.targets, self.labelled = targets, labelled
        self.vocab_rule = ""  # which rule built the vocabulary (set by the builder; logged by the task)
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
        if not self.labelled:
            return {"image": image, "question": r["question"], "index": i}
        return {"image": image, "question": r["question"],
                "target": self.targets(r["answers"], self.answer_to_idx),
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


#: data keys only VQAv2 reads; easy-VQA refuses them rather than ignore them (its 13 answers are fixed).
VQAV2_ONLY_KEYS = ("answer_vocab", "train_splits", "vocab_file")
#: data keys easy-VQA does not read but that configs written before ``data.answer_vocab`` carry (the VQAv2
#: defaults 3129 / 9 of the old base file): named in a note instead of refused, so those runs still evaluate.
VQAV2_LEGACY_KEYS = ("num_answers", "min_answer_count")


def build_easy_vqa(cfg: Any, split: str) -> VQADataset:
    """easy-VQA questions as VQA records with 10 identical answers (unknown answers are an error). The
    vocabulary is the package's fixed list of 13 answers; both soft-score rules give the right answer
    1.0 (10 of 10 annotators), so ``data.answer_vocab`` does not apply and must be null."""
    for k in VQAV2_ONLY_KEYS:
        if cfg.get(k) is not None:
            raise ValueError(f"data.{k}={cfg.get(k)!r} applies to VQAv2 only; easy-VQA's vocabulary is the package's "
                             f"fixed list of 13 answers (answers.txt): set data.{k}=null")
    unused = [f"data.{k}={cfg.get(k)!r}" for k in VQAV2_LEGACY_KEYS if cfg.get(k) is not None]
    if unused and split == "train" and _is_main():
        print(f"[vqa] easy_vqa: {', '.join(unused)} not used (VQAv2 settings; easy-VQA's 13 answers are fixed)",
              flush=True)
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
    ds = VQADataset(records, easy_vqa_answers(cfg.get("root")), tf, strict_answers=True,
                    answer_types=ANSWER_TYPES["easy_vqa"], policy=on_error_policy(cfg))
    ds.vocab_rule = "easy-VQA's fixed answer list (answers.txt of the package)"
    return ds


# --- VQAv2 ------------------------------------------------------------------------------------
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VQAV2_FILES: dict[str, tuple[str, Optional[str], str]] = {
    # split -> (questions json, annotations json or None where the answers are not public, image folder)
    "train": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json", "train2014"),
    "val": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014"),
    "test-dev": ("v2_OpenEnded_mscoco_test-dev2015_questions.json", None, "test2015"),
    "test": ("v2_OpenEnded_mscoco_test2015_questions.json", None, "test2015"),
}
LABELLED_SPLITS = ("train", "val")
ANSWER_VOCAB_RULES = ("meter", "all_answers")
#: Questions per annotated split of the full release (visualqa.org) and the size of METER's vocabulary on
#: it: a meter vocabulary built from exactly these many questions that is not 3,129 answers long means
#: the files or the normalisation differ from METER's.
VQAV2_FULL_QUESTIONS = {"train": 443_757, "val": 214_354}
METER_VOCAB_SIZE = 3129


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (set data.root to the folder with the VQAv2 files)")
    return json.loads(path.read_text())


def _entries(path: Path, what: str, key: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """``json[key]`` of an official file, each entry checked for ``fields`` (a clear error names the file)."""
    data = _read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataFileError(f"{path}: expected a json object with a {key!r} list (the official VQAv2 format)", path)
    for i, e in enumerate(data[key]):
        missing = [f for f in fields if not isinstance(e, dict) or f not in e]
        if missing:
            raise DataFileError(f"{path}: {key}[{i}] has no {missing[0]!r} (the official VQAv2 format)", path)
    return data[key]


def _split_files(split: str) -> tuple[str, Optional[str], str]:
    if split not in VQAV2_FILES:
        raise ValueError(f"VQAv2 split must be one of {list(VQAV2_FILES)}, got {split!r}")
    return VQAV2_FILES[split]


def read_vqav2_annotations(root: str | Path, split: str) -> list[dict[str, Any]]:
    """The ``annotations`` list of a labelled split (train, val), as in the file."""
    af = _split_files(split)[1]
    if af is None:
        raise ValueError(f"VQAv2 {split} has no public annotations (its answers are scored by the evaluation server)")
    return _entries(Path(root).expanduser() / af, "VQAv2 annotations", "annotations", ("question_id", "answers"))


def read_vqav2(root: str | Path, split: str) -> list[dict[str, Any]]:
    """VQAv2 records {image, question, question_id, answers (the annotators' strings), answer_type,
    multiple_choice_answer} joined on question_id; test-dev and test have no annotations (answers [])."""
    root = Path(root).expanduser()
    qf, af, img_dir = _split_files(split)
    qs = _entries(root / qf, "VQAv2 questions", "questions", ("question_id", "image_id", "question"))
    anns = {a["question_id"]: a for a in read_vqav2_annotations(root, split)} if af else {}
    out = []
    for q in qs:
        a = anns.get(q["question_id"], {})
        if af and not a:
            raise KeyError(f"{root / af}: no annotation for question_id {q['question_id']}")
        name = f"COCO_{img_dir}_{int(q['image_id']):012d}.jpg"
        answers = a.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(x, dict) and isinstance(x.get("answer"), str)
                                                    for x in answers):
            raise DataFileError(f"{root / str(af)}: question_id {q['question_id']}: 'answers' must be a list of "
                                "{\"answer\": str, ...} (the official VQAv2 format)", root / str(af))
        out.append({"image": root / img_dir / name, "question": q["question"], "question_id": int(q["question_id"]),
                    "answers": [x["answer"] for x in answers], "answer_type": a.get("answer_type"),
                    "multiple_choice_answer": a.get("multiple_choice_answer")})
    return out


def vocab_rule(cfg: Any) -> str:
    """``data.answer_vocab``: meter (the shipped configs' default) or all_answers. Unset (a config written
    before the key existed) means all_answers, the only rule there was then, so old checkpoints keep
    their vocabulary."""
    rule = cfg.get("answer_vocab")
    if rule is None:
        return "all_answers"
    if rule not in ANSWER_VOCAB_RULES:
        raise ValueError(f"data.answer_vocab must be one of {'|'.join(ANSWER_VOCAB_RULES)}, got {rule!r}")
    return str(rule)


def _meter_vocab(root: Path, min_count: int, top_k: Optional[int]) -> list[str]:
    majors, n = [], {}
    for split in LABELLED_SPLITS:  # METER counts train + val, whatever it trains on
        anns = read_vqav2_annotations(root, split)
        for i, a in enumerate(anns):
            if not isinstance(a.get("multiple_choice_answer"), str):
                raise DataFileError(f"{root / VQAV2_FILES[split][1]}: annotations[{i}] has no multiple_choice_answer "
                                    "(needed by data.answer_vocab=meter; data.answer_vocab=all_answers does without)",
                                    root / str(VQAV2_FILES[split][1]))
            majors.append(a["multiple_choice_answer"])
        n[split] = len(anns)
    vocab = meter_answer_vocab(majors, min_count, top_k)
    if n == VQAV2_FULL_QUESTIONS and min_count == 9 and top_k is None and len(vocab) != METER_VOCAB_SIZE:
        warnings.warn(f"data.answer_vocab=meter on the full VQAv2 release ({n['train']:,} + {n['val']:,} questions) "
                      f"gave {len(vocab):,} answers; METER's has {METER_VOCAB_SIZE:,}: check the annotation files in "
                      f"{root}", stacklevel=2)
    return vocab


def vqav2_vocab(cfg: Any) -> list[str]:
    """The answer vocabulary of ``data.answer_vocab``:

    - ``meter`` (METER's, from ViLT's ``write_vqa.py``): the normalised ``multiple_choice_answer`` of every
      train and val question, kept when >= ``data.min_answer_count`` (9) questions have it, in first-seen
      order; 3,129 answers on the full release. ``data.num_answers`` (default null: none) caps it.
    - ``all_answers`` (frozenlm's earlier rule): all 10 normalised annotator answers of the train questions,
      kept when given >= ``data.min_answer_count`` times, the ``data.num_answers`` (default 3129) most frequent.

    ``data.vocab_file`` when set is a fixed file (written once if missing, then read as is); otherwise the
    vocabulary is cached as ``<root>/frozenlm_answer_vocab_<key>.json``, the key covering the annotation files
    it is built from (name, size, mtime) and the settings."""
    root = Path(cfg.root).expanduser()
    rule = vocab_rule(cfg)
    min_count = int(cfg.get("min_answer_count") or 9)
    cap = cfg.get("num_answers")
    top_k = (int(cap) if cap else None) if rule == "meter" else int(cap or 3129)
    splits = LABELLED_SPLITS if rule == "meter" else ("train",)
    if cfg.get("vocab_file"):
        path = Path(cfg.vocab_file).expanduser()
    else:
        anns = [root / str(VQAV2_FILES[s][1]) for s in splits]
        for ann in anns:
            if not ann.is_file():
                raise FileNotFoundError(f"VQAv2 annotations not found: {ann} (set data.root to the folder with the "
                                        f"VQAv2 files; data.answer_vocab={rule} needs {' and '.join(splits)})")
        # all_answers keeps its earlier key, so caches written before data.answer_vocab existed are found again
        settings = ({"what": "vqav2_answer_vocab", "version": 1, "num_answers": top_k, "min_count": min_count}
                    if rule == "all_answers" else
                    {"what": "vqav2_answer_vocab", "version": 2, "rule": rule, "num_answers": top_k,
                     "min_count": min_count})
        path = root / f"frozenlm_answer_vocab_{cache_key(settings, anns, root)}.json"

    def build() -> list[str]:
        if rule == "meter":
            return _meter_vocab(root, min_count, top_k)
        return answer_vocab([r["answers"] for r in read_vqav2(root, "train")], top_k, min_count)

    return load_or_build(path, build, lambda vocab, tmp: tmp.write_text(json.dumps(vocab)),
                         lambda p: json.loads(p.read_text()))


def vqav2_train_splits(cfg: Any) -> list[str]:
    """``data.train_splits``: the annotated splits the training set is read from (null: [train]; METER
    trains on [train, val])."""
    splits = cfg.get("train_splits") or ["train"]
    if isinstance(splits, str):
        splits = [splits]
    bad = [s for s in splits if s not in LABELLED_SPLITS]
    if bad or len(set(splits)) != len(splits):
        raise ValueError(f"data.train_splits must list distinct annotated VQAv2 splits {list(LABELLED_SPLITS)}, "
                         f"got {list(splits)!r}")
    return list(splits)


def build_vqav2(cfg: Any, split: str) -> VQADataset:
    """VQAv2 split ``train`` (``data.train_splits``), ``val``, or the unannotated ``test-dev`` / ``test``
    (for the evaluation server), with the answer vocabulary of :func:`vqav2_vocab`.

    With ``data.answer_vocab=meter`` the training targets are :func:`meter_soft_scores` and, as METER does,
    training questions none of whose answers is in the vocabulary are left out (nothing to learn);
    val keeps every question, so ``overall`` is the official accuracy over the whole split."""
    if not cfg.get("root"):
        raise ValueError("data.root is required for VQAv2 (folder with the question/annotation json files "
                         "and the COCO train2014/val2014/test2015 image folders)")
    if split not in ("train", "val", "test-dev", "test"):
        raise ValueError(f"VQAv2 split must be train | val | test-dev | test, got {split!r}")
    rule = vocab_rule(cfg)
    vocab = vqav2_vocab(cfg)
    targets = meter_soft_scores if rule == "meter" else soft_scores
    splits = vqav2_train_splits(cfg) if split == "train" else [split]
    records = [r for s in splits for r in read_vqav2(cfg.root, s)]
    labelled = split in ("train", "val")
    if split == "train" and rule == "meter":
        known = set(vocab)
        kept = [r for r in records if any(a in known for a in r["answers"])]
        if len(kept) < len(records) and _is_main():
            print(f"[vqa] vqav2 train: left out {len(records) - len(kept):,} of {len(records):,} questions with no "
                  "answer in the vocabulary (as METER does)", flush=True)
        records = kept
    if labelled:
        n = cfg.get("subset_train") if split == "train" else cfg.get("subset_val")
        records = subset(records, n, cfg.get("subset_seed"))
    elif cfg.get("subset_val"):
        raise ValueError(f"data.subset_val={cfg.get('subset_val')} with VQAv2 {split}: the evaluation server needs an "
                         "answer for every question; set data.subset_val=null")
    tf = image_transform(int(cfg.img_size), CLIP_MEAN, CLIP_STD, split == "train")
    ds = VQADataset(records, vocab, tf, answer_types=ANSWER_TYPES["vqav2"], policy=on_error_policy(cfg),
                    targets=targets, labelled=labelled)
    ds.vocab_rule = (f"data.answer_vocab={rule}" + (" (unset: the rule before the key existed)"
                                                      if cfg.get("answer_vocab") is None else ""))
    return ds


def write_submission(path: str | Path, question_ids: Sequence[int], predictions: Sequence[int],
                     vocab: Sequence[str]) -> int:
    """Write the VQA evaluation server's results file, ``[{"question_id": int, "answer": str}]``
    (visualqa.org/evaluation.html), one entry per question id, each id exactly once; ``predictions`` are
    vocabulary indices. Written atomically; returns the number of entries."""
    if len(question_ids) != len(predictions):
        raise ValueError(f"{len(question_ids)} question ids but {len(predictions)} predictions")
    seen: set[int] = set()
    out = []
    for q, p in zip(question_ids, predictions):
        q, p = int(q), int(p)
        if q in seen:
            raise ValueError(f"question_id {q} appears twice; the evaluation server needs each question once")
        if not 0 <= p < len(vocab):
            raise ValueError(f"prediction {p} for question_id {q} is outside the {len(vocab)}-answer vocabulary")
        seen.add(q)
        out.append({"question_id": q, "answer": vocab[p]})
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(out)))
    return len(out)


VQA_DATASETS: dict[str, Callable[[Any, str], VQADataset]] = {"easy_vqa": build_easy_vqa, "vqav2": build_vqav2}


def build_vqa_dataset(cfg: Any, split: str) -> VQADataset:
    """data.name -> dataset (easy_vqa | vqav2); ``split`` train | val | test (+ test-dev for VQAv2)."""
    name = cfg.get("name")
    if name not in VQA_DATASETS:
        raise ValueError(f"data.name {name!r} is not a VQA dataset; choose one of {sorted(VQA_DATASETS)}")
    return VQA_DATASETS[name](cfg, split)
