"""Loading a model holds no more than what the engine keeps of it.

The engine reads each weight from the file's mapping and packs it; the pages
it reads count as the process's resident memory until they are dropped. A
tensor is dropped in chunks as it is scanned, copied and packed, so that the
largest one (PaliGemma's token table: 1.2 GB at 3B, needed twice when it is
both the tied output layer and the embedding lookup) is never resident beside
its copies. Here a PaliGemma whose token table is 256 MB in bfloat16 loads in
a fresh interpreter, and its peak resident memory must stay within a wave of
packing (64 MB) of what it holds once loaded; holding the table's pages
through the load would add all 256 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pali_engine.benchmarks.paligemma_checkpoint import SHAPES, write_checkpoint  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402

VOCAB = 524288
HIDDEN = 256
TABLE_MB = VOCAB * HIDDEN * 2 / 2**20


@pytest.fixture(scope="module")
def large_table_model(tmp_path_factory):
    config = json.loads(json.dumps(SHAPES["paligemma2-3b-224"]))
    config["image_token_index"] = 4000
    config["projection_dim"] = HIDDEN
    config["text_config"].update(hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                 query_pre_attn_scalar=64, vocab_size=VOCAB, num_image_tokens=4)
    config["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=28, num_image_tokens=4, num_positions=4,
                                   projection_dim=HIDDEN)
    preprocessor = {"size": {"height": 28, "width": 28}, "image_seq_length": 4, "resample": 3,
                    "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    folder = tmp_path_factory.mktemp("large-table")
    write_checkpoint(str(folder / "hf"), config, preprocessor=preprocessor)
    path = str(folder / "model.onnx")
    convert(str(folder / "hf"), path, dtype="bfloat16", validate=False, external_data=True)
    return path


def _load_memory_mb(path: str, dtype: str) -> dict:
    """Resident memory of a fresh interpreter before, at the peak of, and after loading ``path``."""
    code = (
        "import json, sys\n"
        "import pali_engine\n"
        "def status():\n"
        "    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "    return {key: int(fields[key].split()[0]) / 1024 for key in ('VmRSS', 'VmHWM')}\n"
        "before = status()\n"
        f"engine = pali_engine.Engine.load({path!r}, dtype={dtype!r}, threads=2)\n"
        "after = status()\n"
        "print(json.dumps({'before': before['VmHWM'], 'peak': after['VmHWM'], 'after': after['VmRSS']}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
@pytest.mark.skipif(any(runtime in os.environ.get("LD_PRELOAD", "") for runtime in ("libasan", "libtsan")),
                    reason="a sanitizer's shadow memory and allocator change resident memory by design")
@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_the_token_table_is_not_resident_beside_its_copies(large_table_model, dtype):
    memory = _load_memory_mb(large_table_model, dtype)
    held = memory["after"] - memory["before"]
    transient = memory["peak"] - memory["after"]
    # bfloat16 reads the table back from the packed output layer; int8 and int4
    # keep a bfloat16 copy for the lookup beside the quantized output layer.
    assert held > 0.9 * TABLE_MB, memory
    assert transient < 96, f"{dtype}: the load peaked {transient:.0f} MB above what it holds ({memory})"
