"""The hand-written exposition renders byte for byte what prometheus-client renders.

The same families are built once with our classes and once with prometheus-client's (their
`add_metric` signatures are the same), rendered by both in both formats, and compared.
"""

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import prometheus_client.core as prom
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from sidecar.telemetry import exposition as ours
from sidecar.telemetry.exposition import Registry, go_float, render_openmetrics, render_text

label_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12
)
values = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, max_value=1e15, allow_nan=False),
)


def families(lib: ModuleType, spec: dict[str, Any]) -> list[Any]:
    counter = lib.CounterMetricFamily(
        "lightmesh_things", 'Things\\ counted,\n "quoted".', labels=["b_label", "a_label"]
    )
    for (a, b), value in spec["counter"]:
        counter.add_metric([b, a], value)
    gauge = lib.GaugeMetricFamily("lightmesh_level", "A level.")
    gauge.add_metric([], spec["gauge"])
    histogram = lib.HistogramMetricFamily("lightmesh_seconds", "Durations.", labels=["z", "code"])
    for (z, code), counts, total in spec["histograms"]:
        cumulative, running = [], 0
        for bound, count in zip(("0.005", "0.1", "2.5"), counts, strict=False):
            running += count
            cumulative.append((bound, running))
        cumulative.append(("+Inf", running))
        histogram.add_metric([z, code], cumulative, total)
    empty = lib.CounterMetricFamily("lightmesh_nothing_total", "Never counted.", labels=["x"])
    return [counter, gauge, histogram, empty]


class Fixed:
    def __init__(self, built: list[Any]) -> None:
        self.built = built

    def collect(self) -> Iterator[Any]:
        yield from self.built


specs = st.fixed_dictionaries(
    {
        "counter": st.lists(st.tuples(st.tuples(label_values, label_values), values), max_size=4),
        "gauge": values,
        "histograms": st.lists(
            st.tuples(
                st.tuples(label_values, label_values),
                st.lists(st.integers(min_value=0, max_value=1000), min_size=3, max_size=3),
                st.floats(min_value=0, max_value=1e6, allow_nan=False),
            ),
            max_size=3,
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(specs)
def test_both_formats_are_byte_identical_to_prometheus_client(spec: dict[str, Any]) -> None:
    registry = Registry()
    registry.register(Fixed(families(ours, spec)))
    theirs = CollectorRegistry()
    theirs.register(Fixed(families(prom, spec)))  # type: ignore[arg-type]
    assert render_text(registry) == generate_latest(theirs)
    assert render_openmetrics(registry) == generate_openmetrics(theirs)  # type: ignore[no-untyped-call]


def test_values_print_as_go_prints_them() -> None:
    assert [go_float(v) for v in (1, 0.5, 1234567.0, 1e-05, float("inf"))] == [
        "1.0",
        "0.5",
        "1.234567e+06",
        "1e-05",
        "+Inf",
    ]
