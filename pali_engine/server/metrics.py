"""The server's metrics in Prometheus' text exposition format (version 0.0.4), for ``GET /metrics``.

Why written here: the server needs a handful of counters, gauges and
histograms; the format is a few lines of text per metric, so a dependency
would add more than it saves. Everything is updated from the event loop's
thread and read there, so no lock is needed.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

Labels = Tuple[Tuple[str, str], ...]

#: Seconds: from a few milliseconds (the bundled model's caption) to a minute (a large model's long answer).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, doc: str):
        self.name, self.doc, self.kind = name, doc, "counter"
        self.values: Dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def lines(self) -> List[str]:
        return [f"{self.name}{_label_text(k)} {_number(v)}" for k, v in sorted(self.values.items())] or \
            [f"{self.name} 0"]


class Gauge:
    """A value read when the metrics are scraped (``kind="counter"``: one that only grows, kept elsewhere)."""

    def __init__(self, name: str, doc: str, read: Callable[[], float], kind: str = "gauge"):
        self.name, self.doc, self.kind = name, doc, kind
        self.read = read

    def lines(self) -> List[str]:
        return [f"{self.name} {_number(self.read())}"]


class Histogram:
    def __init__(self, name: str, doc: str, buckets: Sequence[float]):
        self.name, self.doc, self.kind = name, doc, "histogram"
        self.buckets = tuple(buckets) + (math.inf,)
        self.series: Dict[Labels, list] = {}  # labels -> [bucket counts..., sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.series.setdefault(key, [0] * len(self.buckets) + [0.0])
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                series[i] += 1
        series[-1] += value

    def count(self, **labels: str) -> int:
        series = self.series.get(tuple(sorted(labels.items())))
        return series[len(self.buckets) - 1] if series else 0

    def lines(self) -> List[str]:
        out = []
        for key, series in sorted(self.series.items()):
            for bound, count in zip(self.buckets, series):
                out.append(f"{self.name}_bucket{_label_text(key + (('le', _number(bound)),))} {count}")
            out.append(f"{self.name}_sum{_label_text(key)} {_number(series[-1])}")
            out.append(f"{self.name}_count{_label_text(key)} {series[len(self.buckets) - 1]}")
        return out


class TokenRate:
    """Tokens per second over the last ``window_s`` seconds (what the engine has been producing lately)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.events: Deque[Tuple[float, int]] = collections.deque()

    def add(self, tokens: int) -> None:
        self.events.append((time.monotonic(), tokens))

    def rate(self) -> float:
        cutoff = time.monotonic() - self.window_s
        while self.events and self.events[0][0] < cutoff:
            self.events.popleft()
        return sum(n for _, n in self.events) / self.window_s


class ServerMetrics:
    """Every metric the server exposes; ``queue_depth`` and ``active`` are read from the server's
    scheduler, ``engine_stats`` (``Engine.scheduler_stats``) from the engine's."""

    def __init__(self, queue_depth: Callable[[], int], active: Callable[[], int],
                 engine_stats: Callable[[], Optional[dict]] = lambda: None):
        self.rate = TokenRate()
        self.requests = Counter("pali_requests_total", "HTTP requests answered, by route and status code")
        self.tokens = Counter("pali_tokens_generated_total", "tokens generated (eos included)")
        self.prompt_tokens = Counter("pali_prompt_tokens_total", "prompt tokens read (image tokens included)")
        self.latency = Histogram("pali_request_duration_seconds",
                                 "time from a generation request's arrival to its last byte, by route",
                                 LATENCY_BUCKETS)
        self.first_token = Histogram("pali_time_to_first_token_seconds",
                                     "time from a generation request's arrival to its first generated token",
                                     LATENCY_BUCKETS)
        self.queue_wait = Histogram("pali_queue_wait_seconds", "time a request waited for an engine slot",
                                    LATENCY_BUCKETS)
        self.batch_size = Histogram("pali_batch_size", "requests per engine call", BATCH_BUCKETS)
        self.all = [
            Gauge("pali_queue_depth", "requests waiting for an engine slot", queue_depth),
            Gauge("pali_active_requests", "engine calls running now", active),
            Gauge("pali_tokens_per_second", f"tokens generated per second over the last {self.rate.window_s:g} s",
                  self.rate.rate),
            self.requests, self.tokens, self.prompt_tokens, self.latency, self.first_token, self.queue_wait,
            self.batch_size,
        ]

        def engine(key: str) -> Callable[[], float]:
            return lambda: (engine_stats() or {}).get(key, 0)

        self.all += [
            Gauge("pali_engine_active_requests", "engine calls the engine's scheduler is generating for now",
                  engine("active_requests")),
            Gauge("pali_engine_batch_rows", "rows the engine's scheduler steps together now (the decode batch)",
                  engine("active_rows")),
            Gauge("pali_engine_queued_requests", "engine calls waiting for a place in the decode batch",
                  engine("queued_requests")),
            Gauge("pali_engine_steps_total", "decode steps the engine's scheduler has run", engine("steps"),
                  kind="counter"),
            Gauge("pali_engine_joined_requests_total", "engine calls that joined others already generating",
                  engine("joined_requests"), kind="counter"),
        ]

    def add_tokens(self, count: int) -> None:
        self.tokens.inc(count)
        self.rate.add(count)

    def exposition(self) -> str:
        lines = []
        for metric in self.all:
            lines.append(f"# HELP {metric.name} {metric.doc}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"
