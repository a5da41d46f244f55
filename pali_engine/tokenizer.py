"""SentencePiece tokenizer for PaLI models (runtime: sentencepiece only).

Conventions of the "pali" architecture: pad=0, eos=1, unk=2, no bos.  As in
T5, ``encode`` appends eos to every text (the encoder prompt is
``pieces + [eos]``); the decoder starts from pad (decoder_start_token_id) and
stops at eos.  ``decode`` drops pad and eos (and stops at the first eos).
"""

from __future__ import annotations

import os
from typing import Iterable, List, Sequence, Union

import sentencepiece as spm

from ._shutdown import native_call


class Tokenizer:
    """Wraps a SentencePiece model given as a file path or the model bytes."""

    def __init__(self, model: Union[str, os.PathLike, bytes], pad_id: int = 0, eos_id: int = 1):
        self.sp = spm.SentencePieceProcessor()
        if isinstance(model, (bytes, bytearray)):
            self._proto = bytes(model)
        else:
            path = os.fspath(model)
            try:
                with open(path, "rb") as f:
                    self._proto = f.read()
            except OSError as e:
                raise ValueError(f"cannot read tokenizer model {path!r}: {e}") from None
        with native_call("sentencepiece"):
            try:
                self.sp.LoadFromSerializedProto(self._proto)
            except Exception as e:  # sentencepiece raises RuntimeError/OSError
                raise ValueError(f"not a SentencePiece model: {e}") from None
            self.unk_id = self.sp.unk_id()
            self._pieces = self.sp.get_piece_size()
        self.pad_id = pad_id
        self.eos_id = eos_id

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        return cls(path)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tokenizer":
        return cls(bytes(data))

    def to_bytes(self) -> bytes:
        """The serialized SentencePiece model (what the ONNX metadata stores)."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._pieces

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_eos: bool = True) -> List[int]:
        """text -> token ids, with eos appended (T5 convention) unless add_eos=False."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"text is not valid Unicode: {text[error.start]!r} at index {error.start} "
                             "is a lone surrogate") from None
        with native_call("sentencepiece"):
            ids = list(self.sp.encode(text))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_eos: bool = True) -> List[List[int]]:
        return [self.encode(t, add_eos) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """token ids -> text; pad is skipped and decoding stops at the first eos.

        Ids past the SentencePiece model (a model's vocabulary may be padded
        beyond it) are skipped too.
        """
        out = []
        pieces = self._pieces
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.pad_id or not 0 <= i < pieces:
                continue
            out.append(i)
        with native_call("sentencepiece"):
            return self.sp.decode(out)

    def id_to_piece(self, i: int) -> str:
        with native_call("sentencepiece"):
            return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        with native_call("sentencepiece"):
            return self.sp.piece_to_id(piece)
