"""Prometheus exposition written by hand: metric families, a registry, and both text formats.

The sidecar's metrics are all custom collectors that build families at scrape time, so the part of
prometheus-client it used is the family classes and the two renderers; importing the library
costs the steady-state process 4 MB of RSS (it pulls in http.server, wsgiref, email, threading
helpers), about a tenth of the sidecar's budget. This module renders exactly what
prometheus-client 0.2x renders for such families (tests/unit/sidecar/telemetry/test_exposition.py
compares them byte for byte): the 0.0.4 text format (counters named with `_total` in HELP and
TYPE) and OpenMetrics 1.0 (family names without `_total`, `# EOF`); label names sorted; label
values escaped (backslash, newline, double quote); values as Go prints floats.

Names and label names are the sidecar's own constants, all in the legacy character set, so they
are written as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

# As prometheus-client 0.2x labels its text output (the body is the 0.0.4 text format).
TEXT_CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Metric:
    """One metric family and its samples: (sample name, labels, value)."""

    __slots__ = ("documentation", "labels", "name", "samples", "type")

    def __init__(
        self, name: str, documentation: str, kind: str, labels: Sequence[str] = ()
    ) -> None:
        if kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        self.name = name
        self.documentation = documentation
        self.type = kind
        self.labels = tuple(labels)
        self.samples: list[tuple[str, dict[str, str], float]] = []


class CounterMetricFamily(Metric):
    """A counter: one `<name>_total` sample per label set."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "counter", labels)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        """One sample."""
        self.samples.append(
            (f"{self.name}_total", dict(zip(self.labels, values, strict=True)), value)
        )


class GaugeMetricFamily(Metric):
    """A gauge: one sample per label set."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "gauge", labels)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        """One sample."""
        self.samples.append((self.name, dict(zip(self.labels, values, strict=True)), value))


class HistogramMetricFamily(Metric):
    """A histogram: cumulative `_bucket` samples (`le`), then `_count` and `_sum`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "histogram", labels)

    def add_metric(
        self, values: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        """One label set: `buckets` are (upper bound as text, cumulative count), +Inf last."""
        labels = dict(zip(self.labels, values, strict=True))
        bucket = f"{self.name}_bucket"
        for bound, count in buckets:
            self.samples.append((bucket, {**labels, "le": bound}, count))
        if float(buckets[0][0]) >= 0:
            self.samples.append((f"{self.name}_count", labels, buckets[-1][1]))
            self.samples.append((f"{self.name}_sum", labels, sum_value))


class Collector(Protocol):
    """Builds metric families when /metrics is scraped."""

    def collect(self) -> Iterable[Metric]:
        """The families, built now."""


class Registry:
    """The collectors of one sidecar, in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        """Add a collector."""
        self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        """Every family of every collector."""
        for collector in self._collectors:
            yield from collector.collect()


def go_float(value: float) -> str:
    """A value as Go's strconv formats it (Prometheus' reference), e.g. 1.0, 1.5e+06, +Inf."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def render_text(registry: Registry) -> bytes:
    """The Prometheus text format 0.0.4."""
    out: list[str] = []
    for metric in registry.collect():
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {metric.type}\n")
        for sample, labels, value in metric.samples:
            out.append(f"{sample}{_labels(labels)} {go_float(value)}\n")
    return "".join(out).encode("utf-8")


def render_openmetrics(registry: Registry) -> bytes:
    """OpenMetrics 1.0 text."""
    out: list[str] = []
    for metric in registry.collect():
        name = metric.name
        out.append(f"# HELP {name} {_escape(metric.documentation)}\n# TYPE {name} {metric.type}\n")
        for sample, labels, value in metric.samples:
            out.append(f"{sample}{_labels(labels)} {go_float(value)}\n")
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")
