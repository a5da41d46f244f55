"""Train the SentencePiece tokenizer of the default model.

Why: the default model reads prompts and writes answers in five languages plus
location tokens; a small unigram SentencePiece model trained offline on the
shapes-world text (prompts and targets of every task) covers it with a short
vocabulary.  Conventions (shared with pali_engine.tokenizer and the engine):
pad=0, eos=1, unk=2, no bos; ``<loc0000>``..``<loc1023>`` are user-defined
pieces (always one token each); byte fallback for anything unseen.

    python -m export.tokenizer_train --out export/default/tokenizer.model
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile

from .data import corpus_lines

NUM_LOC = 1024


def train_tokenizer(out_path: str, vocab_size: int = 2048, n_per_task: int = 6000,
                    seed: int = 12345) -> int:
    """Train and write ``out_path``; returns the vocabulary size."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for line in corpus_lines(n_per_task, seed):
                f.write(line + "\n")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=1.0,
            byte_fallback=True,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            user_defined_symbols=[f"<loc{i:04d}>" for i in range(NUM_LOC)],
            split_digits=True,
            num_threads=2,
            minloglevel=2,
        )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return sp.get_piece_size()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="export/default/tokenizer.model")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--n-per-task", type=int, default=6000)
    a = p.parse_args(argv)
    n = train_tokenizer(a.out, a.vocab_size, a.n_per_task)
    print(f"wrote {a.out} (vocab {n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
