"""A small, thread-safe Prometheus registry (text exposition format 0.0.4).

The service needs a handful of counters, gauges and histograms; writing the text format is a
few lines, so this avoids a dependency. Metric and label names follow Prometheus conventions
(``anzoo_`` prefix, ``_total`` counters, ``_seconds`` durations).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "ServiceMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down (no labels)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        with self._lock:
            return self._value

    def samples(self) -> list[str]:
        return [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float],
                 labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets)) + (math.inf,)
        self._data: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * len(self.buckets), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(self._key(labels))
            return data[0][-1] if data else 0

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        for key, (counts, total) in items:
            for bound, count in zip(self.buckets, counts):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels_text(self.label_names, key, le)} {count}")
            lines.append(f"{self.name}_sum{_labels_text(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels_text(self.label_names, key)} {counts[-1]}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    """The metrics of ``anzoo serve``."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.requests: Counter = add(Counter(  # type: ignore[assignment]
            "anzoo_requests_total", "HTTP requests answered, by route and status code.",
            ("route", "status")))
        self.latency: Histogram = add(Histogram(  # type: ignore[assignment]
            "anzoo_request_duration_seconds", "Time from request received to response ready.",
            LATENCY_BUCKETS, ("route",)))
        self.errors: Counter = add(Counter(  # type: ignore[assignment]
            "anzoo_errors_total", "Requests answered with an error, by kind.", ("kind",)))
        self.batch_size: Histogram = add(Histogram(  # type: ignore[assignment]
            "anzoo_batch_size", "Images per forward pass.", BATCH_BUCKETS, ("model",)))
        self.inference: Histogram = add(Histogram(  # type: ignore[assignment]
            "anzoo_inference_duration_seconds", "Model forward and mask pasting time per batch.",
            LATENCY_BUCKETS, ("model",)))
        self.queue_depth: Gauge = add(Gauge(  # type: ignore[assignment]
            "anzoo_queue_depth", "Images waiting for the model worker."))
        self.ready: Gauge = add(Gauge(  # type: ignore[assignment]
            "anzoo_ready", "1 when the models are loaded and warmed up."))

    def render(self) -> str:
        return self.registry.render()
