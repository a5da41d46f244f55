"""Search algorithms in NumPy: greedy, sampling and beam search over a step function.

Why: the onnxruntime backend generates with these, and they are the reference
the native engine's search is checked against, so they are written for
clarity, one row at a time where that is clearer, with the semantics of
``transformers.generate`` (5.x; see docs/onnx_format.md):

* ``step(sequences int64[N, t]) -> float[N, V]``: the scores of the next
  token after each row (raw logits, or log-probs: log_softmax is applied here
  and leaves log-probs unchanged).  Row ``r`` belongs to input
  ``r // rows_per_input(options)``.  A row is its input's initial sequence
  followed by the tokens generated so far: by default the decoder start token
  alone (``start_id``; the decoder_input_ids of an encoder-decoder model);
  ``initial_sequences`` gives each input its own, such as a decoder-only
  model's whole padded prompt, whose last position scores the first token.
* greedy and sampling: logits processors on the raw scores (repetition
  penalty, no-repeat n-grams, min_new_tokens), then warpers when sampling
  (temperature, top-k, top-p); a finished row continues with pad.  Score: the
  sum of the model's log-probs (unprocessed) of the generated tokens.
* beam search: processors on the log-probs; each step takes the top 2K of
  K x V continuations; an eos within the top K ends a hypothesis scored
  ``sum_logprobs / generated_len ** length_penalty`` (generated_len counts the
  eos); ``early_stopping`` True / False / "never" as in transformers, the
  bound on what a running beam can still reach taken from the best running
  beam (transformers >= 4.50), not from the step's best candidate.  Score:
  that normalised score.
* processors see the whole row, initial sequence included (as transformers
  does: the start token of an encoder-decoder model, the whole padded prompt
  of a decoder-only one); hypotheses hold only what follows it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np


StepFn = Callable[[np.ndarray], np.ndarray]

NEG_INF = -math.inf


def _option_specs() -> List[Dict[str, Any]]:
    from ._native import _core

    return _core.generation_options()


#: The options of generate(), defined once in C++ (csrc/generate/generation_options.cc):
#: [{"name", "kind", "default", "low", "high", "doc"}], in transformers' names.
OPTION_SPECS: Tuple[Dict[str, Any], ...] = tuple(_option_specs())

#: Validated generation options (names, defaults and meanings of transformers'
#: GenerationConfig); made by ``parse_options``.  A ``max_new_tokens`` of None is
#: the model's default; a ``seed`` of None draws a fresh one per call.
GenerationOptions = dataclasses.make_dataclass(
    "GenerationOptions", [(spec["name"], Any, field(default=spec["default"])) for spec in OPTION_SPECS],
    frozen=True)
GenerationOptions.__module__ = __name__
GenerationOptions.__doc__ = "Validated generation options: " + ", ".join(
    f"{spec['name']} ({spec['doc']})" for spec in OPTION_SPECS)

OPTION_NAMES = tuple(spec["name"] for spec in OPTION_SPECS)


@dataclass
class Hypothesis:
    """One generated sequence: tokens (without the start token; eos included when produced)."""

    tokens: List[int]
    score: float


@dataclass
class GenerationResult:
    """What ``Engine.generate`` returns for one input (and one returned sequence)."""

    text: str
    tokens: List[int]
    score: float
    timings: Dict[str, float] = field(default_factory=dict)
    _image_size: Optional[Tuple[int, int]] = field(default=None, repr=False)
    _parse_objects: Optional[Callable] = field(default=None, repr=False, compare=False)
    #: An image given as a path: its size is read from the file only when asked for.
    _image_path: Optional[str] = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        """(width, height) of the input image."""
        if self._image_size is None and self._image_path is not None:
            from .backend import image_size

            self._image_size = image_size(self._image_path)
        return self._image_size

    @property
    def objects(self) -> list:
        """The boxes of a detection or segmentation answer, in the input image's pixels:
        ``pali_engine.segmentation.SegmentedObject`` (box x0, y0, x1, y1; label; mask codes or None)."""
        size = self.image_size
        if self._parse_objects is None or size is None:
            return []
        return self._parse_objects(self.text, size)


def parse_options(options: Mapping[str, Any], config: Mapping[str, Any]) -> GenerationOptions:
    """Checks user options against the C++ table; ValueError names unknown options and bad values.

    ``max_new_tokens`` defaults to ``config["max_new_tokens"]``.
    """
    from ._native import _core

    return GenerationOptions(**_core.parse_generation_options(dict(options), int(config["max_new_tokens"])))


def rows_per_input(options: GenerationOptions) -> int:
    """How many decoder rows each input gets (beams, or independent samples)."""
    if options.num_beams > 1:
        return options.num_beams
    return options.num_return_sequences if options.do_sample else 1


# --------------------------------------------------------------------------
# scores

def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def apply_repetition_penalty(scores: np.ndarray, seqs: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: every token already in the row
    (start token included): score < 0 -> score * penalty, else score / penalty."""
    if penalty == 1.0:
        return scores
    scores = scores.copy()
    for r in range(scores.shape[0]):
        tokens = np.unique(seqs[r])
        s = scores[r, tokens]
        scores[r, tokens] = np.where(s < 0, s * penalty, s / penalty)
    return scores


def banned_ngram_tokens(seq: Sequence[int], n: int) -> List[int]:
    """Tokens that would repeat an n-gram of ``seq`` (transformers' NoRepeatNGramLogitsProcessor)."""
    seq = list(seq)
    cur = len(seq)
    if n <= 0 or cur + 1 < n:
        return []
    prefix = tuple(seq[cur - n + 1:]) if n > 1 else ()
    banned = []
    for i in range(cur - n + 1):
        if tuple(seq[i:i + n - 1]) == prefix:
            banned.append(seq[i + n - 1])
    return banned


def process(scores: np.ndarray, seqs: np.ndarray, step: int, options: GenerationOptions, eos_id: int) -> np.ndarray:
    """The logits processors, in transformers' order: repetition penalty, no-repeat n-grams, min_new_tokens."""
    scores = apply_repetition_penalty(scores, seqs, options.repetition_penalty)
    if options.no_repeat_ngram_size > 0:
        scores = scores.copy()
        for r in range(scores.shape[0]):
            banned = banned_ngram_tokens(seqs[r].tolist(), options.no_repeat_ngram_size)
            if banned:
                scores[r, banned] = NEG_INF
    if step < options.min_new_tokens:
        scores = scores.copy()
        scores[:, eos_id] = NEG_INF
    return scores


def warp(scores: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """Sampling warpers, in transformers' order: temperature, top-k, top-p (each keeps >= 1 token)."""
    scores = np.array(scores, dtype=np.float64)
    if options.temperature != 1.0:
        scores = scores / options.temperature
    V = scores.shape[-1]
    if options.top_k:
        k = min(max(options.top_k, 1), V)
        kth = np.sort(scores, axis=-1)[:, V - k][:, None]
        scores = np.where(scores < kth, NEG_INF, scores)
    if options.top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending
        sorted_scores = np.take_along_axis(scores, order, -1)
        probs = np.exp(log_softmax(sorted_scores))
        remove_sorted = np.cumsum(probs, axis=-1) <= (1 - options.top_p)
        remove_sorted[:, -1] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)
        scores = np.where(remove, NEG_INF, scores)
    return scores


# --------------------------------------------------------------------------
# initial sequences

def initial_rows(batch_size: int, rows: int, start_id: Optional[int] = None,
                 initial_sequences: Optional[np.ndarray] = None) -> np.ndarray:
    """int64[batch_size * rows, L]: each input's initial sequence, once for each of its ``rows``.

    ``initial_sequences`` int64[batch_size, L] (one length for all: padded prompts), or None for
    the start token alone (L = 1).
    """
    if initial_sequences is None:
        if start_id is None:
            raise ValueError("the search needs a start_id or initial_sequences")
        initial = np.full((batch_size, 1), start_id, dtype=np.int64)
    else:
        initial = np.asarray(initial_sequences, dtype=np.int64)
        if initial.ndim != 2 or initial.shape[0] != batch_size or initial.shape[1] < 1:
            raise ValueError(f"initial_sequences must be [{batch_size} (the batch), length >= 1], "
                             f"got {list(initial.shape)}")
    return np.repeat(initial, rows, axis=0)


# --------------------------------------------------------------------------
# greedy and sampling

def iter_greedy(step: StepFn, batch_size: int, options: GenerationOptions, *,
                start_id: Optional[int] = None, eos_id: int, pad_id: int,
                initial_sequences: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
    """Greedy (or sampling) decoding, one step at a time.

    Yields ``(tokens int64[N], finished bool[N], scores float64[N])`` after each step, N =
    batch_size * rows_per_input; finished rows get pad.  Stops at eos in every row
    or after max_new_tokens.  Rows start from ``initial_sequences`` (default: ``start_id``).
    """
    N = batch_size * rows_per_input(options)
    rng = np.random.default_rng(options.seed) if options.do_sample else None
    seqs = initial_rows(batch_size, rows_per_input(options), start_id, initial_sequences)
    finished = np.zeros(N, dtype=bool)
    total = np.zeros(N, dtype=np.float64)
    for s in range(options.max_new_tokens):
        raw = np.asarray(step(seqs), dtype=np.float64)
        logp = log_softmax(raw)
        scores = process(raw, seqs, s, options, eos_id)
        if options.do_sample:
            probs = np.exp(log_softmax(warp(scores, options)))
            cdf = np.cumsum(probs, axis=-1)
            u = rng.random(N) * cdf[:, -1]
            nxt = np.array([min(int(np.searchsorted(cdf[r], u[r], side="right")), cdf.shape[1] - 1)
                            for r in range(N)], dtype=np.int64)
        else:
            nxt = np.argmax(scores, axis=-1).astype(np.int64)
        nxt = np.where(finished, pad_id, nxt)
        total = total + np.where(finished, 0.0, logp[np.arange(N), nxt])
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        finished = finished | (nxt == eos_id)
        yield nxt, finished.copy(), total.copy()
        if finished.all():
            break


def _trim(tokens: Sequence[int], eos_id: int) -> List[int]:
    out = []
    for t in tokens:
        out.append(int(t))
        if t == eos_id:
            break
    return out


def greedy(step: StepFn, batch_size: int, options: GenerationOptions, *,
           start_id: Optional[int] = None, eos_id: int, pad_id: int, on_token=None,
           initial_sequences: Optional[np.ndarray] = None) -> List[List[Hypothesis]]:
    """Greedy search or sampling; ``on_token(input index, token)`` is called for each new token but eos.

    A row whose ``on_token`` returns False stops there (its tokens so far, as the native engine does).
    """
    R = rows_per_input(options)
    N = batch_size * R
    columns = []
    total = np.zeros(N)
    live = np.ones(N, dtype=bool)
    stopped_at = np.full(N, -1)
    stopped_total = np.zeros(N)
    for nxt, finished, total in iter_greedy(step, batch_size, options, start_id=start_id, eos_id=eos_id,
                                            pad_id=pad_id, initial_sequences=initial_sequences):
        columns.append(nxt)
        if on_token is not None:
            for r in np.flatnonzero(live & (nxt != eos_id)):
                if on_token(int(r) // R, int(nxt[r])) is False:
                    stopped_at[r], stopped_total[r] = len(columns), total[r]
        live = ~finished & (stopped_at < 0)
        if not live.any():
            break
    seqs = np.stack(columns, axis=1) if columns else np.zeros((N, 0), np.int64)
    total = np.where(stopped_at >= 0, stopped_total, total)
    return [[Hypothesis(_trim(seqs[r, : stopped_at[r]] if stopped_at[r] >= 0 else seqs[r], eos_id), float(total[r]))
             for r in range(b * R, (b + 1) * R)] for b in range(batch_size)]


# --------------------------------------------------------------------------
# beam search

class BeamHypotheses:
    """The n best finished hypotheses of one input (transformers' BeamHypotheses)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping, max_new_tokens: int):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_new_tokens = max_new_tokens
        self.beams: List[tuple] = []  # (score, tokens)
        self.worst_score = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, tokens: List[int], sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best = best_sum_logprobs / self.max_new_tokens ** self.length_penalty
        else:
            best = best_sum_logprobs / generated_len ** self.length_penalty
        return self.worst_score >= best

    def best(self, n: int) -> List[Hypothesis]:
        ranked = sorted(self.beams, key=lambda b: b[0], reverse=True)
        return [Hypothesis(list(t), float(s)) for s, t in ranked[:n]]


def beam_search(step: StepFn, batch_size: int, options: GenerationOptions, *,
                start_id: Optional[int] = None, eos_id: int, pad_id: int,
                initial_sequences: Optional[np.ndarray] = None) -> List[List[Hypothesis]]:
    """Beam search with K = num_beams rows per input; returns num_return_sequences best per input.

    Rows start from ``initial_sequences`` (default: ``start_id``); hypotheses hold what follows.
    """
    B, K = batch_size, options.num_beams
    seqs = initial_rows(B, K, start_id, initial_sequences)
    initial_length = seqs.shape[1]
    beam_scores = np.zeros((B, K), dtype=np.float64)
    beam_scores[:, 1:] = -1e9  # only the first beam is live at the start
    beam_scores = beam_scores.reshape(-1)
    hyps = [BeamHypotheses(K, options.length_penalty, options.early_stopping, options.max_new_tokens)
            for _ in range(B)]
    done = [False] * B
    for s in range(options.max_new_tokens):
        logp = process(log_softmax(step(seqs)), seqs, s, options, eos_id)
        V = logp.shape[-1]
        cand = (beam_scores[:, None] + logp).reshape(B, K * V)
        top_i = np.argsort(-cand, axis=1, kind="stable")[:, : 2 * K]
        top_s = np.take_along_axis(cand, top_i, 1)
        new_scores = np.zeros((B, K))
        new_tok = np.full((B, K), pad_id, dtype=np.int64)
        new_src = np.zeros((B, K), dtype=np.int64)
        for b in range(B):
            new_src[b] = b * K
            if done[b]:
                continue
            n = 0
            for rank in range(2 * K):
                score, (beam, token) = float(top_s[b, rank]), divmod(int(top_i[b, rank]), V)
                if token == eos_id:
                    if rank >= K:
                        continue
                    tokens = seqs[b * K + beam, initial_length:].tolist() + [eos_id]
                    hyps[b].add(tokens, score, generated_len=s + 1)
                else:
                    new_scores[b, n], new_tok[b, n], new_src[b, n] = score, token, b * K + beam
                    n += 1
                if n == K:
                    break
            # The bound is the best running beam (transformers >= 4.50), not the best candidate.
            done[b] = hyps[b].is_done(float(new_scores[b, 0]), s + 1)
        src = new_src.reshape(-1)
        seqs = np.concatenate([seqs[src], new_tok.reshape(-1, 1)], axis=1)
        beam_scores = new_scores.reshape(-1)
        if all(done):
            break
    for b in range(B):
        if done[b]:
            continue
        for k in range(K):
            hyps[b].add(seqs[b * K + k, initial_length:].tolist(), float(beam_scores[b * K + k]),
                        generated_len=seqs.shape[1] - initial_length)
    return [h.best(options.num_return_sequences) for h in hyps]


def generate(step: StepFn, batch_size: int, options: GenerationOptions, *,
             start_id: Optional[int] = None, eos_id: int, pad_id: int, on_token=None,
             initial_sequences: Optional[np.ndarray] = None) -> List[List[Hypothesis]]:
    """Runs the search ``options`` asks for: per input, num_return_sequences hypotheses (best first for beams).

    Each input's rows start from its row of ``initial_sequences`` int64[batch_size, L] (a
    decoder-only model's padded prompt), or, by default, from ``start_id`` alone.
    ``on_token`` (greedy search and sampling only) sees each new token as it is chosen.
    """
    if options.num_beams > 1:
        return beam_search(step, batch_size, options, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
                           initial_sequences=initial_sequences)
    return greedy(step, batch_size, options, start_id=start_id, eos_id=eos_id, pad_id=pad_id, on_token=on_token,
                  initial_sequences=initial_sequences)
