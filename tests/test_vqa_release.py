"""VQAv2 as released and as METER trains on it (issue 18, item 4).

The files are written here in the official VQAv2 format (visualqa.org/download.html; the readers of
GT-Vision-Lab/VQA PythonHelperTools/vqaTools/vqa.py): questions ``{"questions": [{"image_id", "question",
"question_id"}]}``, annotations ``{"annotations": [{"question_id", "image_id", "multiple_choice_answer",
"answers": [{"answer", "answer_confidence", "answer_id"} x 10], "answer_type", "question_type"}]}``, images
``<split>/COCO_<split>_<image_id:012d>.jpg``, test-dev questions in
``v2_OpenEnded_mscoco_test-dev2015_questions.json`` with images in ``test2015/`` and no annotations.

METER's rule (zdou0830/METER meter/datasets/vqav2_dataset.py; its arrow files come from ViLT's
dandelin/ViLT vilt/utils/write_vqa.py, read here in the copy JaredFern/ViLT vilt/utils/write_vqa.py): the
vocabulary is the normalised ``multiple_choice_answer`` of train + val questions with a count >= 9, in
first-seen order; the soft score of an answer given by n annotators (their strings as written) is
get_score(n) = 0.3 / 0.6 / 0.9 / 1.0 for n = 1 / 2 / 3 / >= 4; training questions with no answer in the
vocabulary are dropped. The results file is ``[{"question_id": int, "answer": str}]``
(visualqa.org/evaluation.html). The tiny files use ``data.min_answer_count=2`` so that both rules keep
a few answers and disagree.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from frozenlm.config import load_config
from frozenlm.data import vqa as vqa_data
from frozenlm.data.vqa import build_vqa_dataset, build_vqav2, normalize_answer, vqav2_vocab, write_submission
from frozenlm.tasks.vqa import VQATask

VQA_CFG = "configs/vqa/easyvqa_smollm2.yaml"
TINY = ["model.fusion_layers=1", "model.text.num_layers=1", "model.hidden=64", "model.heads=2",
        "model.embed_dim=32", "model.lm.variant=none", "num_workers=0", "precision=fp32", "progress=false"]

# (question_id, image_id, multiple_choice_answer, the 10 annotators' answers)
TRAIN = [
    (10, 1, "yes", ["yes"] * 10),
    (11, 1, "no", ["no"] * 7 + ["yes"] * 3),
    (12, 2, "2", ["2"] * 2 + ["two"] * 5 + ["3"] * 3),  # "two": the annotators' strings are not normalised by METER
    (13, 2, "yes", ["yes"] * 9 + ["no"]),
    (14, 3, "blue", ["blue"] * 6 + ["navy"] * 2 + ["dark blue"] * 2),
    (15, 3, "red", ["red"] * 5 + ["pink"] * 5),  # no answer in METER's vocabulary: left out of training
]
VAL = [
    (20, 4, "Two", ["Two"] * 4 + ["2"] * 6),
    (21, 4, "blue", ["blue"] * 10),
    (22, 5, "cat", ["cat"] * 10),
    (23, 5, "the cat", ["the cat"] * 8 + ["cat"] * 2),
    (24, 6, "no", ["no"] * 10),
    (25, 6, "green", ["green"] * 10),
]
TEST_DEV = [(30, 7, "is it red?"), (31, 7, "how many?"), (32, 8, "what animal?")]
TEST = TEST_DEV + [(33, 9, "what color?"), (34, 9, "is it day?")]  # test2015 holds test-dev and test-std

# By hand from the rules above (min_answer_count 2):
# meter: normalised multiple_choice_answer, train then val, first-seen order, count >= 2:
#   yes 2, no 2, "2" 2 ("2", "Two"), blue 2, red 1, cat 2 ("cat", "the cat"), green 1
METER_VOCAB = ["yes", "no", "2", "blue", "cat"]
# all_answers: all annotator answers of train, normalised, most frequent first (ties: first seen):
#   yes 22, no 8, 2 7 ("2" + "two"), blue 6, red 5, pink 5, 3 3, navy 2, dark blue 2
ALL_ANSWERS_VOCAB = ["yes", "no", "2", "blue", "red", "pink", "3", "navy", "dark blue"]


def _annotation(qid: int, iid: int, mc: str, answers: list[str], split: str) -> dict:
    return {"question_id": qid, "image_id": iid, "multiple_choice_answer": mc,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)],
            "answer_type": "yes/no" if mc in ("yes", "no") else "number" if mc in ("2", "Two") else "other",
            "question_type": "what", "data_type": "mscoco", "data_subtype": split}


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")


def write_release(root: Path) -> Path:
    """The VQAv2 files as downloaded (train/val with annotations, test-dev and test without)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows, folder in (("train", TRAIN, "train2014"), ("val", VAL, "val2014")):
        qs = [{"image_id": iid, "question": f"question {qid}?", "question_id": qid} for qid, iid, _, _ in rows]
        (root / f"v2_OpenEnded_mscoco_{folder}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": folder,
             "questions": qs}))
        (root / f"v2_mscoco_{folder}_annotations.json").write_text(json.dumps(
            {"info": {}, "license": {}, "data_subtype": folder,
             "annotations": [_annotation(*r, folder) for r in rows]}))
        for _, iid, _, _ in rows:
            _image(root / folder / f"COCO_{folder}_{iid:012d}.jpg", (iid * 30 % 256, 90, 160))
    for name, rows in (("test-dev2015", TEST_DEV), ("test2015", TEST)):
        (root / f"v2_OpenEnded_mscoco_{name}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": name,
             "questions": [{"image_id": iid, "question": q, "question_id": qid} for qid, iid, q in rows]}))
        for _, iid, _ in rows:
            _image(root / "test2015" / f"COCO_test2015_{iid:012d}.jpg", (200, iid * 20 % 256, 40))
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / "vqav2")


def _data(root: Path, **kw) -> dict:
    cfg = load_config("configs/vqa/_base_.yaml", [f"data.root={root}", "data.min_answer_count=2",
                                                  "data.img_size=32"]).data
    cfg.update(kw)
    return cfg


def _by_qid(ds) -> dict[int, dict]:
    return {r["question_id"]: ds[i] for i, r in enumerate(ds.records)}


def test_meter_vocabulary_is_multiple_choice_answers_of_train_and_val(release: Path) -> None:
    files = [release / "v2_mscoco_train2014_annotations.json", release / "v2_mscoco_val2014_annotations.json"]
    majors = [a["multiple_choice_answer"] for f in files for a in json.loads(f.read_text())["annotations"]]
    counts = Counter(normalize_answer(a) for a in majors)  # an independent count, first-seen order
    assert [a for a in counts if counts[a] >= 2] == METER_VOCAB
    assert vqav2_vocab(_data(release)) == METER_VOCAB  # the shipped default rule is meter
    allans = [normalize_answer(a) for f in files[:1] for ann in json.loads(f.read_text())["annotations"]
              for a in (x["answer"] for x in ann["answers"])]
    assert [a for a, n in Counter(allans).most_common() if n >= 2] == ALL_ANSWERS_VOCAB
    assert vqav2_vocab(_data(release, answer_vocab="all_answers")) == ALL_ANSWERS_VOCAB
    assert vqav2_vocab(_data(release, num_answers=3)) == ["yes", "no", "2"]  # a cap keeps the most frequent
    with pytest.raises(ValueError, match="answer_vocab must be one of meter|all_answers"):
        vqav2_vocab(_data(release, answer_vocab="top3129"))
    ann = json.loads(files[1].read_text())
    del ann["annotations"][2]["multiple_choice_answer"]
    files[1].write_text(json.dumps(ann))
    with pytest.raises(ValueError, match=r"val2014_annotations.json: annotations\[2\] has no multiple_choice_answer"):
        vqav2_vocab(_data(release))


def test_soft_scores_and_training_questions_follow_the_rule(release: Path) -> None:
    meter = build_vqav2(_data(release), "train")
    old = build_vqav2(_data(release, answer_vocab="all_answers"), "train")
    assert sorted(r["question_id"] for r in meter.records) == [10, 11, 12, 13, 14]  # 15: nothing to learn
    assert sorted(r["question_id"] for r in old.records) == [10, 11, 12, 13, 14, 15]
    m, o = _by_qid(meter), _by_qid(old)
    v, w = {a: i for i, a in enumerate(METER_VOCAB)}, {a: i for i, a in enumerate(ALL_ANSWERS_VOCAB)}

    def nonzero(item: dict, idx: dict) -> dict[str, float]:
        return {a: round(float(item["target"][i]), 4) for a, i in idx.items() if item["target"][i] > 0}

    assert nonzero(m[11], v) == {"no": 1.0, "yes": 0.9}            # 7 and 3 annotators
    assert nonzero(m[12], v) == {"2": 0.6}                          # "2" twice; "two" x5 is not "2" in METER
    assert nonzero(m[13], v) == {"yes": 1.0, "no": 0.3}
    assert nonzero(m[14], v) == {"blue": 1.0}
    assert nonzero(o[11], w) == {"no": 1.0, "yes": 1.0}             # min(n/3, 1)
    assert nonzero(o[12], w) == {"2": 1.0, "3": 1.0}                # "two" normalised to "2": 7 annotators
    assert nonzero(o[13], w) == {"yes": 1.0, "no": round(1 / 3, 4)}
    assert nonzero(o[14], w) == {"blue": 1.0, "navy": round(2 / 3, 4), "dark blue": round(2 / 3, 4)}
    # The metric is the official accuracy under both rules, and val keeps every question.
    val = build_vqav2(_data(release), "val")
    assert len(val) == len(VAL) and float(_by_qid(val)[23]["score"][METER_VOCAB.index("cat")]) == pytest.approx(1.0)
    assert float(_by_qid(val)[20]["score"][METER_VOCAB.index("2")]) == pytest.approx(1.0)
    both = build_vqav2(_data(release, train_splits=["train", "val"]), "train")  # METER's training set
    assert sorted(r["question_id"] for r in both.records) == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]


def test_meter_rule_on_the_full_release_checks_the_size(release: Path, monkeypatch) -> None:
    # What the full release would look like: these question counts, and a vocabulary size to compare with.
    monkeypatch.setattr(vqa_data, "VQAV2_FULL_QUESTIONS", {"train": len(TRAIN), "val": len(VAL)})
    monkeypatch.setattr(vqa_data, "METER_VOCAB_SIZE", len(METER_VOCAB))
    cfg = _data(release, min_answer_count=9)
    monkeypatch.setattr(vqa_data, "meter_answer_vocab", lambda majors, m, k: METER_VOCAB)  # the expected size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vqav2_vocab(cfg)
    monkeypatch.setattr(vqa_data, "meter_answer_vocab", lambda majors, m, k: METER_VOCAB[:4])
    cfg["vocab_file"] = str(release / "other.json")  # not the cache of the call above
    with pytest.warns(UserWarning, match="gave 4 answers; METER's has 5"):
        vqav2_vocab(cfg)


def test_test_dev_is_read_without_annotations(release: Path) -> None:
    assert not list(release.glob("*test*annotations*"))
    ds = build_vqav2(_data(release), "test-dev")
    assert [r["question_id"] for r in ds.records] == [30, 31, 32] and not ds.labelled
    assert ds.records[2]["image"] == release / "test2015" / "COCO_test2015_000000000008.jpg"
    item = ds[0]
    assert set(item) == {"image", "question", "index"} and item["question"] == "is it red?"
    assert item["image"].shape == (3, 32, 32) and ds.vocab == METER_VOCAB
    assert [r["question_id"] for r in build_vqav2(_data(release), "test").records] == [30, 31, 32, 33, 34]
    with pytest.raises(ValueError, match="needs an answer for every question; set data.subset_val=null"):
        build_vqav2(_data(release, subset_val=2), "test-dev")
    with pytest.raises(FileNotFoundError, match="test-dev2015_questions.json"):
        (release / "v2_OpenEnded_mscoco_test-dev2015_questions.json").unlink()
        build_vqav2(_data(release), "test-dev")


def test_write_submission_checks_ids_and_answers(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert write_submission(out, [5, 7], [1, 0], ["yes", "no"]) == 2
    assert json.loads(out.read_text()) == [{"question_id": 5, "answer": "no"}, {"question_id": 7, "answer": "yes"}]
    with pytest.raises(ValueError, match="question_id 5 appears twice"):
        write_submission(out, [5, 5], [0, 0], ["yes"])
    with pytest.raises(ValueError, match="outside the 1-answer vocabulary"):
        write_submission(out, [5], [3], ["yes"])


def _cfg(release: Path, run: Path, *extra: str):
    return load_config(VQA_CFG, TINY + [
        "data.name=vqav2", f"data.root={release}", "data.answer_vocab=meter", "data.min_answer_count=2",
        f"model.num_answers={len(METER_VOCAB)}", "data.subset_train=null", "data.subset_val=null",
        "batch_size=4", "eval_batch_size=2", "max_steps=1", "eval_every=0", f"run_dir={run}", *extra])


def test_frozenlm_eval_writes_the_test_dev_submission(release: Path, tmp_path: Path, capsys) -> None:
    from frozenlm.cli import main_eval
    from frozenlm.engine import train
    run = tmp_path / "run"
    metrics = train(_cfg(release, run))
    assert 0.0 <= metrics["overall"] <= 100.0
    assert "[vqa] vqav2: 5-answer vocabulary (data.answer_vocab=meter)" in capsys.readouterr().out
    for split, rows in (("test-dev", TEST_DEV), ("test", TEST)):
        got = main_eval([str(run), f"eval_split={split}"])
        assert got == {"questions": len(rows)}
        sub = json.loads((run / f"vqa_{split}_submission.json").read_text())
        assert sorted(e["question_id"] for e in sub) == [q for q, _, _ in rows]  # every question once
        assert all(set(e) == {"question_id", "answer"} and isinstance(e["question_id"], int)
                   and e["answer"] in METER_VOCAB for e in sub)
    # The answers are the model's arg-max: the same checkpoint scored directly gives the same answers.
    from frozenlm import load_trained
    model, cfg = load_trained(run)
    task = VQATask()
    ds = task.build_dataset(cfg, "test-dev")
    batch = task.collate_fn(cfg, "test-dev")([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(batch["images"], batch["input_ids"], batch["attention_mask"])["vqa_logits"].argmax(1)
    sub = {e["question_id"]: e["answer"] for e in json.loads((run / "vqa_test-dev_submission.json").read_text())}
    assert [sub[q] for q, _, _ in TEST_DEV] == [METER_VOCAB[int(p)] for p in pred]
    other = tmp_path / "elsewhere" / "dev.json"
    main_eval([str(run), "eval_split=test-dev", f"vqa.submission_file={other}"])
    assert json.loads(other.read_text()) == json.loads((run / "vqa_test-dev_submission.json").read_text())


def test_unanswerable_submissions_are_refused(release: Path, tmp_path: Path) -> None:
    from frozenlm.engine import evaluate, train
    with pytest.raises(ValueError, match="test-dev has no public answers, so it cannot be the validation split"):
        train(_cfg(release, tmp_path / "bad", "eval_split=test-dev"))
    run = tmp_path / "run"
    train(_cfg(release, run))
    with pytest.raises(ValueError, match="ema.eval=true"):
        evaluate(run, ["eval_split=test-dev", "ema.eval=true"])
    (release / "test2015" / "COCO_test2015_000000000007.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"2 of 3 test-dev questions got no answer \(first question ids: \[30, 31\]"):
        evaluate(run, ["eval_split=test-dev", "data.on_error=skip", "eval_batch_size=3"])
    assert not (run / "vqa_test-dev_submission.json").exists()


def test_easy_vqa_keeps_its_fixed_answers() -> None:
    cfg = load_config(VQA_CFG)
    assert cfg.data.answer_vocab is None
    assert len(build_vqa_dataset(cfg.data, "val").vocab) == 13
    with pytest.raises(ValueError, match="data.answer_vocab='meter' applies to VQAv2 only"):
        build_vqa_dataset(load_config(VQA_CFG, ["data.answer_vocab=meter"]).data, "val")
    assert load_config("configs/vqa/vqav2_meter.yaml").data.answer_vocab == "meter"
