"""The "shapes world": a synthetic multilingual, multitask vision-language dataset.

Why: the default model of pali-engine is trained from scratch on this data, so
that the engine can be checked end to end (exact match per task) with a model
small enough for a CPU.  Every image is rendered with PIL from a seed, so the
data is deterministic and unlimited; the held-out split is disjoint from the
training split by image content (a hash of the rendered pixels decides the
split, so no held-out image can ever appear in training).

Scenes: 1-4 non-overlapping objects (5 shapes, 7 colours, 2 sizes) on a light,
plain or gradient background; some images also carry a short word.

Tasks (prompt -> target), all with canonical answers so exact match is fair:

* ``caption en|fr|de|es|ru`` -> e.g. ``two red circles and a blue square`` /
  ``deux cercles rouges et un carré bleu``.  Objects are grouped by
  (shape, colour) and the groups are listed in a fixed order (shape order
  circle, square, triangle, star, diamond; then colour order), so each scene
  has exactly one caption per language.  The word written in the image, if
  any, is not mentioned.
* ``answer en <question>`` -> counting (``how many circles?`` -> ``2``),
  colour of a shape, shape of a colour, yes/no presence, left/right.
* ``ocr`` -> the word written in the image.
* ``detect <label> ; <label>`` -> ``<locY0><locX0><locY1><locX1> label ; ...``,
  boxes in bins of 1024 (see ``to_bin``), instances of each requested label
  left to right, labels in the prompt's order.

Only numpy and PIL are used (no torch), so this module also works in the
runtime install.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------
# vocabulary of the world

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
SIZES = ("small", "large")
LANGS = ("en", "fr", "de", "es", "ru")

COLOUR_RGB = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 20),
    "purple": (135, 55, 190),
    "orange": (245, 130, 20),
    "black": (25, 25, 25),
}
TEXT_RGB = (70, 70, 70)

# object side length as a fraction of the image size
SIZE_FRAC = {"small": 0.19, "large": 0.31}

WORDS = (
    "cat dog sun moon tree bird fish book door key ship rain snow star wind fire "
    "milk tea cake bread apple lemon grape house road city park lake hill river "
    "sea sky cloud stone gold iron glass paper pen ink box cup bowl lamp chair "
    "table bed clock bell ring coin map card gift rose leaf seed root farm barn "
    "horse mouse sheep goat duck frog bear wolf fox lion tiger zebra camel eagle "
    "owl crow hawk swan shark whale crab snail ant bee wasp moth worm kite ball "
    "doll game song poem word name time day night noon week year page line dot "
    "open close read write run walk jump swim fly sing play stop go yes no hello "
    "world quiet loud fast slow happy brave calm kind wise cold warm hot dry wet "
    "blue red green pink gray white black north south east west left right up "
    "down king queen knight tower castle bridge train plane boat truck bike"
).split()
# deduplicate, keep order
WORDS = tuple(dict.fromkeys(WORDS))

TASKS = tuple([f"caption_{l}" for l in LANGS] + ["answer_en", "ocr", "detect"])
DEFAULT_TASK_WEIGHTS = {
    "caption_en": 1.0, "caption_fr": 1.0, "caption_de": 1.0, "caption_es": 1.0,
    "caption_ru": 1.0, "answer_en": 2.5, "ocr": 1.2, "detect": 2.3,
}
TASK_METRIC = {t: ("mean_iou" if t == "detect" else "exact_match") for t in TASKS}

HELDOUT_BUCKETS = 16  # 1 in 16 images (by pixel hash) is held-out


# --------------------------------------------------------------------------
# scenes

@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    points: Optional[List[Tuple[float, float]]] = None  # polygon vertices (None: ellipse)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass
class Scene:
    size: int
    objects: List[Obj]
    background: Tuple[Tuple[int, int, int], Tuple[int, int, int]]  # top, bottom colour
    word: Optional[str] = None
    word_pos: Optional[Tuple[int, int]] = None
    word_box: Optional[Tuple[int, int, int, int]] = None


@dataclass
class Example:
    image: np.ndarray  # uint8 [S, S, 3]
    prompt: str
    target: str
    task: str
    scene: Optional[Scene] = field(default=None, repr=False)


_FONT = None


def get_font():
    """The PIL bitmap font (always available, crisp at small sizes)."""
    global _FONT
    if _FONT is None:
        try:
            _FONT = ImageFont.load_default_imagefont()
        except AttributeError:  # Pillow < 10.1
            _FONT = ImageFont.load_default()
    return _FONT


def _shape_points(shape: str, x0: float, y0: float, s: float):
    """Polygon vertices of a shape of side ``s`` at (x0, y0); None for circles."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x0 + s - 1, y0), (x0 + s - 1, y0 + s - 1), (x0, y0 + s - 1)]
    if shape == "triangle":
        return [(x0 + (s - 1) / 2, y0), (x0 + s - 1, y0 + s - 1), (x0, y0 + s - 1)]
    if shape == "diamond":
        c = (s - 1) / 2
        return [(x0 + c, y0), (x0 + s - 1, y0 + c), (x0 + c, y0 + s - 1), (x0, y0 + c)]
    if shape == "star":
        r_out = (s - 1) / 2
        r_in = r_out * 0.45
        cx, cy = x0 + r_out, y0 + r_out * 1.1
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _box_of(shape: str, x0: int, y0: int, s: int, pts) -> Tuple[float, float, float, float]:
    if pts is None:
        return (float(x0), float(y0), float(x0 + s), float(y0 + s))
    xs = [round(p[0]) for p in pts]
    ys = [round(p[1]) for p in pts]
    return (float(min(xs)), float(min(ys)), float(max(xs) + 1), float(max(ys) + 1))


def _overlap(a, b, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def random_scene(rng: np.random.Generator, size: int = 64, n_objects: Optional[int] = None,
                 with_word: bool = False) -> Scene:
    """Sample a scene: 1-4 non-overlapping objects, optionally a word."""
    for _attempt in range(100):
        base = rng.integers(175, 246)
        top = tuple(int(np.clip(base + rng.integers(-18, 19), 150, 255)) for _ in range(3))
        if rng.random() < 0.5:
            bottom = top
        else:
            base2 = rng.integers(175, 246)
            bottom = tuple(int(np.clip(base2 + rng.integers(-18, 19), 150, 255)) for _ in range(3))
        taken = []
        word = word_pos = word_box = None
        if with_word:
            word = WORDS[rng.integers(len(WORDS))]
            font = get_font()
            l, t, r, b = font.getbbox(word)
            w, h = r - l, b - t
            if w + 2 > size:
                continue
            wx = int(rng.integers(1, size - w))
            wy = int(rng.integers(1, size - h))
            word_pos = (wx - l, wy - t)
            word_box = (wx, wy, wx + w, wy + h)
            taken.append(tuple(float(v) for v in word_box))
        n = n_objects if n_objects is not None else int(rng.integers(1, 5))
        if with_word and n_objects is None:
            n = int(rng.integers(0, 3))
        objects: List[Obj] = []
        ok = True
        for _ in range(n):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = COLOURS[rng.integers(len(COLOURS))]
            sz = SIZES[rng.integers(len(SIZES))]
            s = max(4, int(round(SIZE_FRAC[sz] * size)))
            placed = False
            for _try in range(60):
                x0 = int(rng.integers(1, size - s))
                y0 = int(rng.integers(1, size - s))
                pts = _shape_points(shape, x0, y0, s)
                box = _box_of(shape, x0, y0, s, pts)
                if any(_overlap(box, t, 2.0) for t in taken):
                    continue
                taken.append(box)
                objects.append(Obj(shape, colour, sz, box, pts))
                placed = True
                break
            if not placed:
                ok = False
                break
        if ok:
            return Scene(size, objects, (top, bottom), word, word_pos, word_box)
    raise RuntimeError("could not place the objects")  # pragma: no cover


def render(scene: Scene, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Render a scene to uint8 [S, S, 3].  Colours get a small jitter from ``rng``."""
    S = scene.size
    top = np.array(scene.background[0], np.float32)
    bot = np.array(scene.background[1], np.float32)
    t = np.linspace(0.0, 1.0, S, dtype=np.float32)[:, None, None]
    bg = (top * (1 - t) + bot * t).repeat(S, axis=1)
    img = Image.fromarray(np.round(bg).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        rgb = COLOUR_RGB[o.colour]
        if rng is not None:
            rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)
        if o.points is None:
            x0, y0, x1, y1 = o.box
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=rgb)
        else:
            draw.polygon([(round(x), round(y)) for x, y in o.points], fill=rgb)
    if scene.word:
        draw.text(scene.word_pos, scene.word, font=get_font(), fill=TEXT_RGB)
    return np.asarray(img, dtype=np.uint8).copy()


# --------------------------------------------------------------------------
# captions in five languages

NUM_EN = {2: "two", 3: "three", 4: "four"}
PLURAL_EN = {s: s + "s" for s in SHAPES}

FR_NOUN = {  # singular, plural, gender
    "circle": ("cercle", "cercles", "m"), "square": ("carré", "carrés", "m"),
    "triangle": ("triangle", "triangles", "m"), "star": ("étoile", "étoiles", "f"),
    "diamond": ("losange", "losanges", "m"),
}
FR_ADJ = {  # m sg, f sg, m pl, f pl
    "red": ("rouge", "rouge", "rouges", "rouges"),
    "green": ("vert", "verte", "verts", "vertes"),
    "blue": ("bleu", "bleue", "bleus", "bleues"),
    "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
    "purple": ("violet", "violette", "violets", "violettes"),
    "orange": ("orange", "orange", "orange", "orange"),  # invariable
    "black": ("noir", "noire", "noirs", "noires"),
}
FR_NUM = {2: "deux", 3: "trois", 4: "quatre"}

ES_NOUN = {
    "circle": ("círculo", "círculos", "m"), "square": ("cuadrado", "cuadrados", "m"),
    "triangle": ("triángulo", "triángulos", "m"), "star": ("estrella", "estrellas", "f"),
    "diamond": ("rombo", "rombos", "m"),
}
ES_ADJ = {
    "red": ("rojo", "roja", "rojos", "rojas"),
    "green": ("verde", "verde", "verdes", "verdes"),
    "blue": ("azul", "azul", "azules", "azules"),
    "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
    "purple": ("morado", "morada", "morados", "moradas"),
    "orange": ("naranja", "naranja", "naranja", "naranja"),  # invariable
    "black": ("negro", "negra", "negros", "negras"),
}
ES_NUM = {2: "dos", 3: "tres", 4: "cuatro"}

DE_NOUN = {  # singular, plural, gender (m, n, f)
    "circle": ("Kreis", "Kreise", "m"), "square": ("Quadrat", "Quadrate", "n"),
    "triangle": ("Dreieck", "Dreiecke", "n"), "star": ("Stern", "Sterne", "m"),
    "diamond": ("Raute", "Rauten", "f"),
}
DE_STEM = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
           "purple": "violett", "orange": "orangefarben", "black": "schwarz"}
DE_NUM = {2: "zwei", 3: "drei", 4: "vier"}

RU_NOUN = {  # nominative sg, genitive sg (after 2-4), gender
    "circle": ("круг", "круга", "m"), "square": ("квадрат", "квадрата", "m"),
    "triangle": ("треугольник", "треугольника", "m"), "star": ("звезда", "звезды", "f"),
    "diamond": ("ромб", "ромба", "m"),
}
RU_ADJ = {  # m nom sg, f nom sg, genitive pl (masculine after 2-4), nominative pl (feminine after 2-4)
    "red": ("красный", "красная", "красных", "красные"),
    "green": ("зелёный", "зелёная", "зелёных", "зелёные"),
    "blue": ("синий", "синяя", "синих", "синие"),
    "yellow": ("жёлтый", "жёлтая", "жёлтых", "жёлтые"),
    "purple": ("фиолетовый", "фиолетовая", "фиолетовых", "фиолетовые"),
    "orange": ("оранжевый", "оранжевая", "оранжевых", "оранжевые"),
    "black": ("чёрный", "чёрная", "чёрных", "чёрные"),
}


def _phrase(lang: str, count: int, colour: str, shape: str) -> str:
    if lang == "en":
        if count == 1:
            art = "an" if colour[0] in "aeiou" else "a"
            return f"{art} {colour} {shape}"
        return f"{NUM_EN[count]} {colour} {PLURAL_EN[shape]}"
    if lang == "fr":
        sg, pl, g = FR_NOUN[shape]
        adj = FR_ADJ[colour]
        if count == 1:
            return f"{'une' if g == 'f' else 'un'} {sg} {adj[1 if g == 'f' else 0]}"
        return f"{FR_NUM[count]} {pl} {adj[3 if g == 'f' else 2]}"
    if lang == "es":
        sg, pl, g = ES_NOUN[shape]
        adj = ES_ADJ[colour]
        if count == 1:
            return f"{'una' if g == 'f' else 'un'} {sg} {adj[1 if g == 'f' else 0]}"
        return f"{ES_NUM[count]} {pl} {adj[3 if g == 'f' else 2]}"
    if lang == "de":
        sg, pl, g = DE_NOUN[shape]
        stem = DE_STEM[colour]
        if count == 1:
            art = "eine" if g == "f" else "ein"
            end = {"m": "er", "n": "es", "f": "e"}[g]
            return f"{art} {stem}{end} {sg}"
        return f"{DE_NUM[count]} {stem}e {pl}"
    if lang == "ru":
        nom, gen, g = RU_NOUN[shape]
        adj = RU_ADJ[colour]
        if count == 1:
            return f"{adj[1 if g == 'f' else 0]} {nom}"
        num = {2: "две" if g == "f" else "два", 3: "три", 4: "четыре"}[count]
        return f"{num} {adj[3 if g == 'f' else 2]} {gen}"
    raise ValueError(f"unknown language {lang!r}")


_AND = {"en": "and", "fr": "et", "de": "und", "es": "y", "ru": "и"}


def groups(scene: Scene) -> List[Tuple[str, str, int]]:
    """(shape, colour, count) groups in canonical order (shape order, then colour order)."""
    counts: Dict[Tuple[str, str], int] = {}
    for o in scene.objects:
        counts[(o.shape, o.colour)] = counts.get((o.shape, o.colour), 0) + 1
    keys = sorted(counts, key=lambda k: (SHAPES.index(k[0]), COLOURS.index(k[1])))
    return [(s, c, counts[(s, c)]) for s, c in keys]


def caption(scene: Scene, lang: str) -> str:
    """The canonical caption of a scene in ``lang``."""
    parts = [_phrase(lang, n, c, s) for s, c, n in groups(scene)]
    if not parts:
        raise ValueError("a scene without objects has no caption")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + f" {_AND[lang]} " + parts[-1]


# --------------------------------------------------------------------------
# question answering (English)

def make_question(scene: Scene, rng: np.random.Generator) -> Tuple[str, str]:
    """A (question, answer) pair about the scene; the question type is sampled
    uniformly among the types that are well defined for it."""
    objs = scene.objects
    shape_count = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    colour_count = {c: sum(o.colour == c for o in objs) for c in COLOURS}
    pair_count: Dict[Tuple[str, str], int] = {}
    for o in objs:
        pair_count[(o.colour, o.shape)] = pair_count.get((o.colour, o.shape), 0) + 1
    kinds = ["count", "presence"]
    if any(v == 1 for v in shape_count.values()):
        kinds.append("colour")
    if any(v == 1 for v in colour_count.values()):
        kinds.append("shape")
    unique = [o for o in objs if pair_count[(o.colour, o.shape)] == 1]
    lr_pairs = [(a, b) for a in unique for b in unique if a is not b and abs(a.cx - b.cx) >= 3]
    if lr_pairs:
        kinds.append("leftright")
    kind = kinds[rng.integers(len(kinds))]
    if kind == "count":
        if rng.random() < 0.12:
            return "how many objects?", str(len(objs))
        present = [s for s in SHAPES if shape_count[s]]
        s = present[rng.integers(len(present))] if rng.random() < 0.7 else SHAPES[rng.integers(len(SHAPES))]
        return f"how many {PLURAL_EN[s]}?", str(shape_count[s])
    if kind == "presence":
        if rng.random() < 0.5:
            o = objs[rng.integers(len(objs))]
            return f"is there a {o.colour} {o.shape}?", "yes"
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in pair_count]
        c, s = absent[rng.integers(len(absent))]
        return f"is there a {c} {s}?", "no"
    if kind == "colour":
        cands = [s for s in SHAPES if shape_count[s] == 1]
        s = cands[rng.integers(len(cands))]
        o = next(o for o in objs if o.shape == s)
        return f"what color is the {s}?", o.colour
    if kind == "shape":
        cands = [c for c in COLOURS if colour_count[c] == 1]
        c = cands[rng.integers(len(cands))]
        o = next(o for o in objs if o.colour == c)
        return f"what shape is the {c} object?", o.shape
    a, b = lr_pairs[rng.integers(len(lr_pairs))]
    ans = "left" if a.cx < b.cx else "right"
    return f"is the {a.colour} {a.shape} left or right of the {b.colour} {b.shape}?", ans


# --------------------------------------------------------------------------
# detection

def to_bin(coord: float, size: int) -> int:
    """Pixel coordinate in [0, size] -> location bin in [0, 1023]."""
    return int(min(1023, max(0, round(coord / size * 1023))))


def from_bin(b: int, size: int) -> float:
    """Location bin -> pixel coordinate (inverse of ``to_bin`` up to rounding)."""
    return b / 1023 * size


def loc_token(b: int) -> str:
    return f"<loc{b:04d}>"


def detect_target(scene: Scene, labels: Sequence[str]) -> str:
    """``<locY0><locX0><locY1><locX1> label`` for every instance of each label
    (labels in the given order, instances left to right), joined by `` ; ``."""
    out = []
    S = scene.size
    for label in labels:
        inst = sorted((o for o in scene.objects if o.shape == label), key=lambda o: (o.box[0], o.box[1]))
        for o in inst:
            x0, y0, x1, y1 = o.box
            out.append("".join(loc_token(to_bin(v, S)) for v in (y0, x0, y1, x1)) + f" {label}")
    return " ; ".join(out)


_DET_RE = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)")


def parse_detections(text: str, size: int) -> List[Tuple[Tuple[float, float, float, float], str]]:
    """Parse ``<loc..>x4 label ; ...`` into [((x0, y0, x1, y1) pixels, label)]."""
    dets = []
    for m in _DET_RE.finditer(text):
        y0, x0, y1, x1 = (from_bin(int(m.group(i)), size) for i in range(1, 5))
        dets.append(((x0, y0, x1, y1), m.group(5).strip()))
    return dets


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def detection_ious(pred: str, target: str, size: int) -> List[float]:
    """One IoU per ground-truth box: ground-truth and predicted boxes with the
    same label are matched one to one, greedily by decreasing IoU; an unmatched
    ground-truth box scores 0.  Extra predicted boxes are not penalised."""
    gt = parse_detections(target, size)
    pr = parse_detections(pred, size)
    pairs = []
    for i, (gb, gl) in enumerate(gt):
        for j, (pb, pl) in enumerate(pr):
            if pl == gl:
                v = iou(gb, pb)
                if v > 0:
                    pairs.append((v, i, j))
    pairs.sort(reverse=True)
    res = [0.0] * len(gt)
    used_g, used_p = set(), set()
    for v, i, j in pairs:
        if i in used_g or j in used_p:
            continue
        used_g.add(i)
        used_p.add(j)
        res[i] = v
    return res


# --------------------------------------------------------------------------
# examples and splits

def _is_heldout(image: np.ndarray) -> bool:
    h = hashlib.blake2b(image.tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") % HELDOUT_BUCKETS == 0


def make_example(task: str, rng: np.random.Generator, size: int = 64) -> Example:
    """Sample a scene suited to ``task`` and build its (prompt, target)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")
    with_word = task == "ocr" or rng.random() < 0.2
    scene = random_scene(rng, size, with_word=with_word)
    if task != "ocr" and not scene.objects:
        scene = random_scene(rng, size, n_objects=int(rng.integers(1, 3)), with_word=with_word)
    image = render(scene, rng)
    if task.startswith("caption_"):
        lang = task.split("_", 1)[1]
        prompt, target = f"caption {lang}", caption(scene, lang)
    elif task == "answer_en":
        q, a = make_question(scene, rng)
        prompt, target = f"answer en {q}", a
    elif task == "ocr":
        prompt, target = "ocr", scene.word
    else:
        present = [s for s in SHAPES if any(o.shape == s for o in scene.objects)]
        k = int(rng.integers(1, min(2, len(present)) + 1))
        idx = rng.permutation(len(present))[:k]
        labels = [present[i] for i in idx]
        prompt, target = "detect " + " ; ".join(labels), detect_target(scene, labels)
    return Example(image, prompt, target, task, scene)


def check_task_weights(weights: Dict[str, float]) -> None:
    """Raises ValueError unless ``weights`` maps task names to finite weights >= 0, one of them > 0."""
    unknown = [t for t in weights if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
    for t, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"the weight of {t} must be finite and >= 0, not {w}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError("at least one task needs a positive weight")


class ShapesWorld:
    """Deterministic sampler of shapes-world examples.

    ``train_example(i)`` is a function of (seed, i) only; ``heldout(task, n)``
    returns the first ``n`` held-out examples of a task.  An image belongs to
    the held-out split iff a hash of its pixels falls in bucket 0 of
    ``HELDOUT_BUCKETS``; the training split rejects such images, so the two
    splits never share an image.
    """

    def __init__(self, image_size: int = 64, seed: int = 0,
                 task_weights: Optional[Dict[str, float]] = None):
        self.image_size = image_size
        self.seed = seed
        w = dict(DEFAULT_TASK_WEIGHTS if task_weights is None else task_weights)
        check_task_weights(w)
        self.tasks = [t for t in TASKS if w.get(t, 0) > 0]
        p = np.array([w[t] for t in self.tasks], np.float64)
        self.task_p = p / p.sum()

    def train_example(self, index: int) -> Example:
        rng = np.random.default_rng([self.seed, 0, index])
        task = self.tasks[rng.choice(len(self.tasks), p=self.task_p)]
        while True:
            ex = make_example(task, rng, self.image_size)
            if not _is_heldout(ex.image):
                return ex

    def train_batch(self, start: int, batch_size: int) -> List[Example]:
        return [self.train_example(i) for i in range(start, start + batch_size)]

    def heldout_iter(self, task: str) -> Iterator[Example]:
        t = TASKS.index(task)
        i = 0
        while True:
            rng = np.random.default_rng([self.seed, 1, t, i])
            i += 1
            ex = make_example(task, rng, self.image_size)
            if _is_heldout(ex.image):
                yield ex

    def heldout(self, task: str, n: int) -> List[Example]:
        it = self.heldout_iter(task)
        return [next(it) for _ in range(n)]


def corpus_lines(n: int = 20000, seed: int = 12345, image_size: int = 64) -> Iterator[str]:
    """Prompts and targets of ``n`` examples per task (text for tokenizer training),
    plus every vocabulary word of every language."""
    for t_i, task in enumerate(TASKS):
        for i in range(n):
            rng = np.random.default_rng([seed, 2, t_i, i])
            with_word = task == "ocr"
            scene = random_scene(rng, image_size, with_word=with_word)
            if task != "ocr" and not scene.objects:
                continue
            if task.startswith("caption_"):
                lang = task.split("_", 1)[1]
                yield f"caption {lang}"
                yield caption(scene, lang)
            elif task == "answer_en":
                q, a = make_question(scene, rng)
                yield f"answer en {q}"
                yield a
            elif task == "ocr":
                yield "ocr"
                yield scene.word
            else:
                present = sorted({o.shape for o in scene.objects}, key=SHAPES.index)
                yield "detect " + " ; ".join(present)
                yield detect_target(scene, present)
    for w in WORDS:
        yield w
