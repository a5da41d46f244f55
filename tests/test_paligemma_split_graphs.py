"""The split PaliGemma graphs (vision, embeddings, decoder with past key/values) and their onnxruntime peer.

On tiny random PaliGemma 1 and 2 checkpoints (tests/paligemma_fixtures.py;
PaliGemma 2's sliding window shorter than the sequences, both soft-caps on):
the decoder's logits step by step equal transformers' forward over the whole
sequence, a left-padded batch included; greedy and beam search with the
length forced give transformers' generate() tokens; onnxruntime's int8
dynamic quantization of the graphs quantizes their MatMuls, stays near
the float32 logits and generates, and the int8 decoder streamed from the
checkpoint is the one quantize_dynamic makes.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)
from PIL import Image  # noqa: E402

from pali_engine.benchmarks.paligemma_split_peer import (SplitGraphGenerator, have_graphs,  # noqa: E402
                                                         quantize_graphs)
from pali_engine.export.paligemma.split_graphs import (FILES, past_names, present_names,  # noqa: E402
                                                       write_int8_decoder, write_split_graphs)

PROMPTS = ["caption en", "answer en how many circles are there?"]
NEW_TOKENS = 6


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma1", "paligemma2"])
def split(request, tmp_path_factory, tokenizer_path):  # noqa: F811 (the fixture imported above)
    """(transformers' model, processor, the folder of split graphs, its generator, the checkpoint)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp(f"split{request.param}")
    model, processor = build_checkpoint(request.param, str(root / "hf"), tokenizer_path)
    folder = str(root / "split")
    sizes = write_split_graphs(str(root / "hf"), folder)
    assert set(sizes) == set(FILES) and have_graphs(folder)
    return model, processor, folder, SplitGraphGenerator(folder, threads=1), str(root / "hf")


def _inputs(processor, prompts):
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in prompts]
    return processor(images=images, text=prompts, padding="longest", return_tensors="pt")


def test_graphs_pass_the_onnx_checker_and_name_the_cache(split):
    import onnx

    model, _, folder, _, _ = split
    layers = model.config.text_config.num_hidden_layers
    for file in FILES:
        onnx.checker.check_model(f"{folder}/{file}")
    decoder = onnx.load(f"{folder}/decoder.onnx", load_external_data=False)
    assert [i.name for i in decoder.graph.input] == ["inputs_embeds", "attention_mask", "position_ids",
                                                     *past_names(layers)]
    assert [o.name for o in decoder.graph.output] == ["logits", *present_names(layers)]
    # Every linear layer's weight is an initializer read by MatMul directly (what quantize_dynamic needs).
    initializers = {i.name for i in decoder.graph.initializer}
    assert not any(n.op_type == "Transpose" and n.input[0] in initializers for n in decoder.graph.node)


def test_step_by_step_logits_equal_transformers_forward(split):
    # A left-padded batch of two prompts, the prompt at once and then four tokens one by one, against
    # transformers' forward over the whole sequence (its prefix-LM mask, sliding windows and soft-caps).
    model, processor, _, generator, _ = split
    inputs = _inputs(processor, PROMPTS)
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    B, L = ids.shape
    suffix = np.array([[5, 9, 17, 4], [8, 3, 3, 11]], np.int64)
    full_ids = np.concatenate([ids, suffix], 1)
    full_mask = np.concatenate([mask, np.ones_like(suffix)], 1)
    token_type = np.concatenate([np.zeros_like(ids), np.ones_like(suffix)], 1)
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(full_ids), attention_mask=torch.from_numpy(full_mask),
                          pixel_values=inputs["pixel_values"], token_type_ids=torch.from_numpy(token_type)
                          ).logits.numpy()

    features = generator.vision.run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    t = generator.config["text_config"]
    empty = np.zeros((B, t["num_key_value_heads"], 0, t["head_dim"]), np.float32)
    out = generator.decoder.run(None, {
        "inputs_embeds": generator._prompt_embeds(features, ids), "attention_mask": mask,
        "position_ids": np.tile(np.arange(1, L + 1), (B, 1)), **{n: empty for n in generator.past}})
    np.testing.assert_allclose(out[0], reference[:, L - 1], rtol=1e-4, atol=1e-4)
    past = out[1:]
    for step in range(suffix.shape[1]):
        out = generator.decoder.run(None, {
            "inputs_embeds": generator.embed.run(None, {"input_ids": suffix[:, step:step + 1]})[0],
            "attention_mask": full_mask[:, :L + step + 1], "position_ids": np.full((B, 1), L + step + 1),
            **dict(zip(generator.past, past))})
        past = out[1:]
        np.testing.assert_allclose(out[0], reference[:, L + step], rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        assert past[0].shape[2] == L + step + 1


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam3"])
def test_generation_equals_transformers_generate(split, beams):
    import warnings

    model, processor, _, generator, _ = split
    inputs = _inputs(processor, PROMPTS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=beams,
                             do_sample=False, length_penalty=1.0)
    expected = out[:, inputs["input_ids"].shape[1]:].numpy()
    ours = generator.generate(inputs["pixel_values"].numpy(), inputs["input_ids"].numpy(),
                              inputs["attention_mask"].numpy(), NEW_TOKENS, num_beams=beams)
    assert ours["tokens"].tolist() == expected.tolist()
    assert ours["steps"] == NEW_TOKENS and 0 < ours["ttft_ms"] <= ours["total_ms"]


def _prompt_logits(generator, inputs):
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    t = generator.config["text_config"]
    empty = np.zeros((ids.shape[0], t["num_key_value_heads"], 0, t["head_dim"]), np.float32)
    features = generator.vision.run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    return generator.decoder.run(None, {
        "inputs_embeds": generator._prompt_embeds(features, ids), "attention_mask": mask,
        "position_ids": np.tile(np.arange(1, ids.shape[1] + 1), (ids.shape[0], 1)),
        **{n: empty for n in generator.past}})[0]


def test_int8_dynamic_quantization_quantizes_and_generates(split, tmp_path):
    import onnx

    _, processor, folder, generator, hf_dir = split
    quantized = str(tmp_path / "int8")
    quantize_graphs(hf_dir, folder, quantized, log=lambda s: None)
    assert have_graphs(quantized)
    for file in ("vision.onnx", "decoder.onnx"):
        ops = {n.op_type for n in onnx.load(f"{quantized}/{file}", load_external_data=False).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, file
    int8 = SplitGraphGenerator(quantized, threads=1)
    inputs = _inputs(processor, PROMPTS)
    ours, reference = _prompt_logits(int8, inputs), _prompt_logits(generator, inputs)
    error = np.sqrt(np.mean((ours - reference) ** 2)) / np.std(reference)
    assert 0 < error < 0.2
    out = int8.generate(inputs["pixel_values"].numpy(), inputs["input_ids"].numpy(),
                        inputs["attention_mask"].numpy(), NEW_TOKENS)
    assert out["tokens"].shape == (2, NEW_TOKENS) and np.isfinite(out["scores"]).all()


def test_streamed_int8_decoder_is_quantize_dynamics(split, tmp_path):
    # write_int8_decoder streams what quantize_dynamic makes of the float32 decoder: the same initializers
    # (names, types, values) and the same logits.
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, processor, folder, generator, hf_dir = split
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    for out in (theirs, ours):
        out.mkdir()
        for file in ("vision.onnx", "vision.onnx.data", "embed.onnx", "embed.onnx.data", "config.json"):
            (out / file).symlink_to(f"{folder}/{file}")
    quantize_dynamic(f"{folder}/decoder.onnx", str(theirs / "decoder.onnx"), weight_type=QuantType.QInt8,
                     use_external_data_format=True)
    write_int8_decoder(hf_dir, str(ours / "decoder.onnx"))
    values = [{i.name: numpy_helper.to_array(i, base_dir=str(d)) for i in
               onnx.load(str(d / "decoder.onnx"), load_external_data=False).graph.initializer}
              for d in (theirs, ours)]
    assert set(values[0]) == set(values[1])
    for name, value in values[0].items():
        assert value.dtype == values[1][name].dtype and np.array_equal(value, values[1][name]), name
    inputs = _inputs(processor, PROMPTS)
    a = _prompt_logits(SplitGraphGenerator(str(theirs), threads=1), inputs)
    b = _prompt_logits(SplitGraphGenerator(str(ours), threads=1), inputs)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
