"""What the bundled default model gets wrong, measured with the shapes world's own renderer.

The held-out scores (README) are near 1.000 because the held-out images come from
the training distribution. This script asks the questions that distribution never
asks and prints how often the answer is right, so the limits in README and
docs/model.md can be checked on any machine:

    python examples/limits.py [--n 40]
"""

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pali_engine import Engine
from pali_engine.export import data as D
from pali_engine.image import fit_to_input


def scene_of(rng, specs, size=64):
    """A scene with the given (shape, colour) objects, placed as the training scenes place theirs."""
    while True:
        scene = D.random_scene(rng, size, n_objects=0)
        taken = []
        for shape, colour in specs:
            side = max(4, int(round(D.SIZE_FRAC[D.SIZES[rng.integers(2)]] * size)))
            for _ in range(60):
                x0, y0 = (int(v) for v in rng.integers(1, size - side, 2))
                points = D._shape_points(shape, x0, y0, side)
                box = D._box_of(shape, x0, y0, side, points)
                if not any(D._overlap(box, other, 2.0) for other in taken):
                    taken.append(box)
                    scene.objects.append(D.Obj(shape, colour, "small", box, points))
                    break
        if len(scene.objects) == len(specs):
            return scene


def random_pair(rng):
    return D.SHAPES[rng.integers(len(D.SHAPES))], D.COLOURS[rng.integers(len(D.COLOURS))]


def share(results, wanted):
    return f"{sum(r.text == w for r, w in zip(results, wanted))}/{len(wanted)}"


def identical_objects(engine, rng, n):
    for count in (1, 2, 3, 4):
        scenes = [scene_of(rng, [random_pair(rng)] * count) for _ in range(n)]
        results = engine.generate([D.render(s, rng) for s in scenes], ["caption en"] * n)
        print(f"caption en, {count} identical object(s): {share(results, [D.caption(s, 'en') for s in scenes])} "
              f"right (e.g. {results[0].text!r} for {D.caption(scenes[0], 'en')!r})")


def absent_labels(engine, rng, n):
    images, prompts = [], []
    for _ in range(n):
        scene = D.random_scene(rng, 64, n_objects=int(rng.integers(1, 4)))
        absent = [s for s in D.SHAPES if all(o.shape != s for o in scene.objects)]
        images.append(D.render(scene, rng))
        prompts.append(f"detect {absent[rng.integers(len(absent))]}")
    results = engine.generate(images, prompts)
    invented = [(p, r.text) for p, r in zip(prompts, results) if "<loc" in r.text]
    example = f" (e.g. {invented[0][0]!r} -> {invented[0][1]!r})" if invented else ""
    print(f"detect <a shape not in the image>: boxes invented in {len(invented)}/{n}{example}")


def ocr_without_a_word(engine, rng, n):
    images = [D.render(D.random_scene(rng, 64, n_objects=int(rng.integers(1, 4))), rng) for _ in range(n)]
    results = engine.generate(images, ["ocr"] * n)
    print(f"ocr on an image without a word: an answer anyway in {sum(bool(r.text) for r in results)}/{n} "
          f"(e.g. {results[0].text!r})")


def ocr_fonts(engine, rng, n):
    fonts = {"PIL's bitmap font (the training font)": D.get_font()}
    try:
        fonts["PIL's scalable default font, 11 px"] = ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow < 10.1, or no FreeType
        pass
    words = [D.WORDS[rng.integers(len(D.WORDS))] for _ in range(n)]
    for name, font in fonts.items():
        images = []
        for word in words:
            image = Image.new("RGB", (64, 64), (225, 225, 225))
            ImageDraw.Draw(image).text((4, 24), word, font=font, fill=D.TEXT_RGB)
            images.append(np.asarray(image))
        print(f"ocr, words in {name}: {share(engine.generate(images, ['ocr'] * n), words)} read right")


def non_square(engine, rng, n, width=320, height=240):
    scenes = []
    while len(scenes) < n:
        scene = D.random_scene(rng, size=width)
        if scene.objects and all(o.box[3] <= height - 1 for o in scene.objects):
            scenes.append((D.render(scene, rng)[:height], D.caption(scene, "en")))
    for resize in ("pad", "stretch"):
        images = [fit_to_input(image, 64, resize=resize) for image, _ in scenes]
        results = engine.generate(images, ["caption en"] * n)
        print(f"caption en, {width}x{height} scenes, resize={resize!r}: "
              f"{share(results, [caption for _, caption in scenes])} right")


def transparent_background(engine, rng, n):
    images, captions = [], []
    for _ in range(n):
        scene = D.random_scene(rng, 64, n_objects=int(rng.integers(1, 4)))
        rgba = np.zeros((64, 64, 4), np.uint8)  # transparent black, as most editors save it
        drawn = D.render(scene, rng)
        mask = np.any(drawn != D.render(D.Scene(64, [], scene.background)), axis=2)
        rgba[mask] = np.concatenate([drawn[mask], np.full((mask.sum(), 1), 255, np.uint8)], axis=1)
        images.append(rgba)
        captions.append(D.caption(scene, "en"))
    print(f"caption en, shapes on a transparent background: {share(engine.generate(images, ['caption en'] * n), captions)}"
          f" right (on white); {share(engine.generate([a[:, :, :3] for a in images], ['caption en'] * n), captions)}"
          " with the alpha channel dropped (black)")


def out_of_world(engine, rng):
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for name, image in (("a 1x1 white image", np.full((1, 1, 3), 255, np.uint8)), ("random noise", noise)):
        answers = {p: engine.generate(image, p).text for p in ("caption en", "ocr", "answer en how many stars?")}
        print(f"{name}: {answers} (no sign that the image is outside the shapes world)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="images per question (default 40)")
    args = parser.parse_args()
    engine = Engine.load()
    rng = np.random.default_rng(0)
    identical_objects(engine, rng, args.n)
    absent_labels(engine, rng, args.n)
    ocr_without_a_word(engine, rng, args.n)
    ocr_fonts(engine, rng, args.n)
    non_square(engine, rng, args.n)
    transparent_background(engine, rng, args.n)
    out_of_world(engine, rng)


if __name__ == "__main__":
    main()
