"""PyTorch side of pali-engine: the PaLI model, the synthetic "shapes world"
dataset, tokenizer training, training and evaluation.

Installed as ``pali_engine.export``; the modules import each other relatively so
the same code also runs from a source checkout as ``export``.  Only ``model``,
``train`` and the torch backend of ``evaluate`` need PyTorch.
"""
