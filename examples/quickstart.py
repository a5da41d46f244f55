"""Every task of the bundled default model on one image.

    python examples/quickstart.py [IMAGE]
"""

import sys
from pathlib import Path

from pali_engine import Engine

image = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("shapes.png"))
engine = Engine.load()  # the bundled default model, on the native CPU engine
for prompt in ("caption en", "caption fr", "caption de", "caption es", "caption ru",
               "answer en how many stars?", "ocr", "detect star ; circle"):
    result = engine.generate(image, prompt, num_beams=2)
    print(f"{prompt:28s} -> {result.text}   ({result.timings['total_ms']:.1f} ms)")

print("streamed: ", end="")
for piece in engine.stream(image, "caption en"):
    print(piece, end="", flush=True)
print()
