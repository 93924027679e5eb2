"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Counters, gauges and histograms with labels; thread-safe, because the inference threads
record batches while the event loop records requests.
"""

from __future__ import annotations

import threading
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple, float] = defaultdict(float)

    def inc(self, *labels, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] += amount

    def value(self, *labels) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = value

    def render(self) -> list[str]:
        return [f"{self.name} {_number(self._value)}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: tuple = LATENCY_BUCKETS):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, *labels) -> int:
        return self._series.get(labels, [0])[-1]

    def render(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, n in zip(self.buckets, series):
                lines.append(f"{self.name}_bucket{_labels((*self.label_names, 'le'), (*key, _number(bound)))} {n}")
            lines.append(f"{self.name}_bucket{_labels((*self.label_names, 'le'), (*key, '+Inf'))} {series[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-1]}")
        return lines


class Metrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self, info: dict[str, str] | None = None):
        self.info = info or {}
        # protocol: http or grpc; endpoint: the HTTP path or the gRPC method; code: HTTP or gRPC status
        self.requests = Counter("resnet50_requests_total", "Requests answered", ("protocol", "endpoint", "code"))
        self.errors = Counter(
            "resnet50_request_errors_total", "Requests answered with an error", ("protocol", "endpoint", "reason")
        )
        self.disconnects = Counter(
            "resnet50_client_disconnects_total", "Requests whose client went away before its answer", ("endpoint",)
        )
        self.refused = Counter(
            "resnet50_connections_refused_total",
            "Connections answered and closed by a connection limit (header timeout, header size, max connections)",
            ("reason",),
        )
        self.connections = Gauge("resnet50_open_connections", "HTTP connections open")
        self.images = Counter("resnet50_images_total", "Images classified")
        self.latency = Histogram(
            "resnet50_request_latency_seconds", "Time from request start to response end", ("protocol", "endpoint")
        )
        self.batch_size = Histogram("resnet50_batch_size", "Images per model run", buckets=BATCH_BUCKETS)
        self.inference = Histogram("resnet50_inference_seconds", "Time of one model run (one batch)")
        self.queue_depth = Gauge("resnet50_queue_depth", "Images waiting for an inference thread")
        self.inflight = Gauge("resnet50_inflight_requests", "Requests admitted and not yet answered")

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)
        self.images.inc(amount=rows)

    def render(self) -> str:
        lines = []
        if self.info:
            names = tuple(sorted(self.info))
            lines += [
                "# HELP resnet50_model_info The model this server runs",
                "# TYPE resnet50_model_info gauge",
                f"resnet50_model_info{_labels(names, tuple(self.info[n] for n in names))} 1",
            ]
        for metric in (
            self.requests,
            self.errors,
            self.disconnects,
            self.refused,
            self.connections,
            self.images,
            self.latency,
            self.batch_size,
            self.inference,
            self.queue_depth,
            self.inflight,
        ):
            lines += metric.header() + metric.render()
        return "\n".join(lines) + "\n"
