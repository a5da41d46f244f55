"""``python -m pali_engine.export.paligemma HF_DIR -o OUT.onnx``: the same as ``pali-engine convert``."""

import sys

from .convert import main

sys.exit(main())
