import argparse

import pytest

from lightmeshctl.flags.sidecar import add_arguments, from_arguments


def test_telemetry_flags_are_validated_naming_the_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ok = from_arguments(
        parser.parse_args(["--workload", "w", "--zipkin-url", "http://z:9411/api/v2/spans",
                           "--trace-sampling", "5", "--istio-metrics", "--no-metrics"])
    )  # fmt: skip
    assert (ok.zipkin_url, ok.trace_sampling, ok.istio_metrics, ok.metrics) == (
        "http://z:9411/api/v2/spans", 5.0, True, False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="--zipkin-url"):
        from_arguments(parser.parse_args(["--workload", "w", "--zipkin-url", "zipkin:9411"]))
    with pytest.raises(ValueError, match="--trace-sampling"):
        from_arguments(parser.parse_args(["--workload", "w", "--trace-sampling", "101"]))


def test_metrics_port_is_off_by_default_and_read_from_its_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*args: str) -> int:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return from_arguments(parser.parse_args(["--workload", "w", *args])).metrics_port

    monkeypatch.delenv("LIGHTMESH_METRICS_PORT", raising=False)
    assert parsed() == 0
    assert parsed("--metrics-port", "15020", "--no-metrics") == 15020  # not --metrics' prefix
    monkeypatch.setenv("LIGHTMESH_METRICS_PORT", "15021")
    assert parsed() == 15021


def test_a_service_registers_with_the_protocol_it_is_served_with() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--workload", "w", "--service", "catalog:h2c", "--service", "web"]
    settings = from_arguments(parser.parse_args(args))
    assert settings.services == ("catalog", "web")
    assert settings.service_protocols == (("catalog", "http2"),)
    with pytest.raises(ValueError, match="--service catalog:spdy"):
        from_arguments(parser.parse_args(["--workload", "w", "--service", "catalog:spdy"]))
