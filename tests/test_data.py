"""Tests of the shapes-world data (export/data.py) and the tokenizer
(pali_engine/tokenizer.py): determinism, split disjointness, caption grammar in
every language, question and detection formats, tokenizer conventions."""

import re

import numpy as np
import pytest


from pali_engine.export import data as D
from pali_engine.export import tokenizer_train
from pali_engine.tokenizer import Tokenizer


def scene(*objs, size=64):
    """Scene from (shape, colour, x0) triples (objects in a row)."""
    out = []
    for shape, colour, x0 in objs:
        out.append(D.Obj(shape, colour, "small", (float(x0), 10.0, float(x0) + 10, 20.0)))
    return D.Scene(size, out, ((200, 200, 200), (200, 200, 200)))


# ---------------------------------------------------------------- determinism, splits

def test_train_examples_are_deterministic():
    a, b = D.ShapesWorld(seed=0), D.ShapesWorld(seed=0)
    for i in (0, 1, 17, 1000):
        ea, eb = a.train_example(i), b.train_example(i)
        assert ea.image.dtype == np.uint8 and ea.image.shape == (64, 64, 3)
        assert np.array_equal(ea.image, eb.image)
        assert (ea.prompt, ea.target, ea.task) == (eb.prompt, eb.target, eb.task)
    assert not np.array_equal(a.train_example(0).image, D.ShapesWorld(seed=1).train_example(0).image)


def test_heldout_is_deterministic_and_disjoint_from_train():
    w = D.ShapesWorld(seed=0)
    held = [e for t in D.TASKS for e in w.heldout(t, 12)]
    held2 = [e for t in D.TASKS for e in w.heldout(t, 12)]
    assert all(np.array_equal(x.image, y.image) and x.target == y.target for x, y in zip(held, held2))
    assert all(D._is_heldout(e.image) for e in held)
    train = [w.train_example(i) for i in range(300)]
    assert not any(D._is_heldout(e.image) for e in train)
    held_bytes = {e.image.tobytes() for e in held}
    assert not any(e.image.tobytes() in held_bytes for e in train)


def test_task_mix_covers_every_task():
    w = D.ShapesWorld(seed=3)
    tasks = {w.train_example(i).task for i in range(400)}
    assert tasks == set(D.TASKS)


def test_scenes_are_valid():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = D.random_scene(rng, 64, with_word=bool(rng.random() < 0.5))
        boxes = [o.box for o in s.objects] + ([s.word_box] if s.word else [])
        for b in boxes:
            assert 0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert not D._overlap(boxes[i], boxes[j], 0.0)
        assert 0 <= len(s.objects) <= 4


# ---------------------------------------------------------------- captions

def test_caption_grammar_two_groups():
    s = scene(("square", "blue", 40), ("circle", "red", 2), ("circle", "red", 20))
    assert D.caption(s, "en") == "two red circles and a blue square"
    assert D.caption(s, "fr") == "deux cercles rouges et un carré bleu"
    assert D.caption(s, "de") == "zwei rote Kreise und ein blaues Quadrat"
    assert D.caption(s, "es") == "dos círculos rojos y un cuadrado azul"
    assert D.caption(s, "ru") == "два красных круга и синий квадрат"


def test_caption_grammar_gender_and_lists():
    s = scene(("star", "orange", 2), ("star", "orange", 14), ("star", "orange", 26),
              ("diamond", "purple", 40))
    assert D.caption(s, "en") == "three orange stars and a purple diamond"
    assert D.caption(s, "fr") == "trois étoiles orange et un losange violet"
    assert D.caption(s, "de") == "drei orangefarbene Sterne und eine violette Raute"
    assert D.caption(s, "es") == "tres estrellas naranja y un rombo morado"
    assert D.caption(s, "ru") == "три оранжевые звезды и фиолетовый ромб"

    s = scene(("triangle", "green", 30), ("star", "yellow", 2), ("circle", "black", 50))
    assert D.caption(s, "en") == "a black circle, a green triangle and a yellow star"
    assert D.caption(s, "fr") == "un cercle noir, un triangle vert et une étoile jaune"
    assert D.caption(s, "de") == "ein schwarzer Kreis, ein grünes Dreieck und ein gelber Stern"
    assert D.caption(s, "es") == "un círculo negro, un triángulo verde y una estrella amarilla"
    assert D.caption(s, "ru") == "чёрный круг, зелёный треугольник и жёлтая звезда"

    s = scene(("star", "green", 2), ("star", "green", 20))
    assert D.caption(s, "fr") == "deux étoiles vertes"
    assert D.caption(s, "ru") == "две зелёные звезды"
    s = scene(*[("square", "black", x) for x in (2, 16, 30, 44)])
    assert D.caption(s, "en") == "four black squares"
    assert D.caption(s, "de") == "vier schwarze Quadrate"
    assert D.caption(s, "es") == "cuatro cuadrados negros"
    assert D.caption(s, "ru") == "четыре чёрных квадрата"
    s = scene(("circle", "orange", 2))
    assert D.caption(s, "en") == "an orange circle"
    assert D.caption(s, "de") == "ein orangefarbener Kreis"


def test_caption_order_is_canonical():
    a = scene(("circle", "red", 2), ("square", "blue", 30))
    b = scene(("square", "blue", 2), ("circle", "red", 30))
    for lang in D.LANGS:
        assert D.caption(a, lang) == D.caption(b, lang)


# ---------------------------------------------------------------- questions, ocr, detection

def test_answers_are_consistent_with_the_scene():
    rng = np.random.default_rng(1)
    for _ in range(300):
        s = D.random_scene(rng, 64)
        if not s.objects:
            continue
        q, a = D.make_question(s, rng)
        m = re.fullmatch(r"how many (\w+)s\?", q)
        if q == "how many objects?":
            assert a == str(len(s.objects))
        elif m:
            assert a == str(sum(o.shape == m.group(1) for o in s.objects))
        elif q.startswith("is there"):
            c, sh = re.fullmatch(r"is there a (\w+) (\w+)\?", q).groups()
            assert a == ("yes" if any(o.colour == c and o.shape == sh for o in s.objects) else "no")
        elif q.startswith("what color"):
            assert a in D.COLOURS
        elif q.startswith("what shape"):
            assert a in D.SHAPES
        else:
            assert a in ("left", "right")


def test_ocr_example():
    ex = D.make_example("ocr", np.random.default_rng(5))
    assert ex.prompt == "ocr" and ex.target in D.WORDS
    x0, y0, x1, y1 = ex.scene.word_box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_detection_format_and_iou():
    s = scene(("circle", "red", 40), ("circle", "blue", 4), ("square", "green", 22))
    t = D.detect_target(s, ["circle", "square"])
    parts = t.split(" ; ")
    assert len(parts) == 3
    for p in parts:
        assert re.fullmatch(r"(<loc\d{4}>){4} (circle|square)", p)
    # instances left to right, labels in prompt order
    assert parts[0].endswith("circle") and parts[2].endswith("square")
    assert parts[0].startswith(D.loc_token(D.to_bin(10, 64)) + D.loc_token(D.to_bin(4, 64)))
    assert D.detection_ious(t, t, 64) == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    # wrong label or missing -> 0
    assert D.detection_ious(t.replace("square", "star"), t, 64)[2] == 0.0
    assert D.detection_ious("", t, 64) == [0.0, 0.0, 0.0]
    ex = D.make_example("detect", np.random.default_rng(2))
    assert ex.prompt.startswith("detect ")
    labels = ex.prompt[len("detect "):].split(" ; ")
    assert {d[1] for d in D.parse_detections(ex.target, 64)} == set(labels)
    assert D.to_bin(0, 64) == 0 and D.to_bin(64, 64) == 1023


# ---------------------------------------------------------------- tokenizer

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    tokenizer_train.train_tokenizer(str(path), n_per_task=300)
    return Tokenizer(str(path))


def test_tokenizer_special_ids(tok):
    assert tok.piece_to_id("<pad>") == 0 and tok.piece_to_id("</s>") == 1 and tok.piece_to_id("<unk>") == 2
    ids = tok.encode("caption en")
    assert ids[-1] == tok.eos_id and tok.eos_id == 1
    assert tok.encode("caption en", add_eos=False) == ids[:-1]
    assert tok.decode([0] + ids + [0, 0]) == "caption en"
    assert tok.decode(ids + [5, 6]) == "caption en"  # stops at eos


def test_tokenizer_loc_tokens_are_single_pieces(tok):
    for i in (0, 1, 512, 1023):
        piece = f"<loc{i:04d}>"
        pid = tok.piece_to_id(piece)
        assert pid != tok.unk_id and tok.id_to_piece(pid) == piece
    text = "<loc0010><loc0020><loc0300><loc1023> circle ; <loc0000><loc0001><loc0002><loc0003> star"
    ids = tok.encode(text, add_eos=False)
    assert sum(tok.id_to_piece(i).startswith("<loc") for i in ids) == 8
    assert tok.decode(ids) == text


def test_tokenizer_round_trip(tok):
    w = D.ShapesWorld(seed=9)
    for i in range(60):
        ex = w.train_example(i)
        for text in (ex.prompt, ex.target):
            assert tok.decode(tok.encode(text)) == text
    # unseen characters go through byte fallback
    assert tok.decode(tok.encode("Zürich 東京 ©")) == "Zürich 東京 ©"


def test_tokenizer_from_bytes(tok):
    t2 = Tokenizer.from_bytes(tok.to_bytes())
    assert t2.encode("caption de") == tok.encode("caption de")
    with pytest.raises(ValueError):
        Tokenizer(b"not a model")
    with pytest.raises(ValueError):
        Tokenizer("/nonexistent/tokenizer.model")
