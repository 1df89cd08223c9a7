"""200 concurrent requests on loopback: zero errors, every request answered."""

from __future__ import annotations

import pytest

from components.serving.app import RequestLimits, create_app
from components.serving.loadtest import run_hostile_load, run_load
from components.serving.server import BackgroundServer, ConnectionLimits
from tests.serving.conftest import API_KEY, MODEL, tiny_service


def test_200_concurrent_requests_zero_errors(server):
    report = run_load(server.base_url, MODEL, requests=200, max_tokens=4, api_key=API_KEY)
    print(f"load: p50={report['p50_s']:.3f}s p99={report['p99_s']:.3f}s wall={report['wall_s']:.1f}s")
    assert report["errors"] == 0, report["error_samples"]
    assert report["completion_tokens"] >= 200  # every request got at least one token
    assert report["p50_s"] <= report["p99_s"]


def test_a_full_queue_answers_503_not_a_crash():
    service = tiny_service("ar")
    with BackgroundServer(create_app(service, max_queue=2)) as srv:
        report = run_load(srv.base_url, MODEL, requests=12, max_tokens=24)
        assert 0 < report["errors"] < 12  # the overflow is refused...
        assert all("503" in e or "busy" in e for e in report["error_samples"])
        # ...and the server still serves afterwards.
        assert run_load(srv.base_url, MODEL, requests=1, max_tokens=2)["errors"] == 0


@pytest.mark.parametrize(
    "requests, malformed, abandoned, slow",
    [
        (40, 24, 12, 4),  # every kind of hostile client, in the default run
        pytest.param(200, 36, 30, 10, marks=pytest.mark.slow),  # the benchmark's size (~80 s here)
    ],
)
def test_concurrent_requests_beside_malformed_abandoned_and_slow_clients_zero_errors_and_no_5xx(
    requests, malformed, abandoned, slow
):
    service = tiny_service()
    limits = RequestLimits(max_body_bytes=256 * 1024, body_timeout_s=1.0)
    try:
        with BackgroundServer(
            create_app(service, max_queue=400, limits=limits), limits=ConnectionLimits(header_timeout_s=5.0)
        ) as srv:
            report = run_hostile_load(
                srv.base_url,
                MODEL,
                requests=requests,
                max_tokens=4,
                malformed=malformed,
                abandoned=abandoned,
                slow=slow,
                max_body_bytes=limits.max_body_bytes,
                client_timeout_s=30,
            )
            assert report["errors"] == 0, report["error_samples"]
            assert report["status_5xx"] == 0 and report["malformed_not_4xx"] == 0, report["statuses"]
            assert sum(report["statuses"]["malformed"].values()) == malformed, report["hostile_failure_samples"]
            assert report["hostile_failures"] == 0, report["hostile_failure_samples"]
            assert set(report["statuses"]["slow"]) == {"408"}  # every slow client was cut off
            assert service.counters.cancelled >= 1  # abandoned ones were not all decoded
            assert run_load(srv.base_url, MODEL, requests=1, max_tokens=2)["errors"] == 0
    finally:
        service.decoder.close()
