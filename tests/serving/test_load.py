"""200 concurrent requests on loopback: zero errors, every request answered."""
from __future__ import annotations

from components.serving.loadtest import run_load
from tests.serving.conftest import API_KEY, MODEL


def test_200_concurrent_requests_zero_errors(server):
    report = run_load(server.base_url, MODEL, requests=200, max_tokens=4, api_key=API_KEY)
    print(f"load: p50={report['p50_s']:.3f}s p99={report['p99_s']:.3f}s wall={report['wall_s']:.1f}s")
    assert report["errors"] == 0, report["error_samples"]
    assert report["completion_tokens"] >= 200  # every request got at least one token
    assert report["p50_s"] <= report["p99_s"]


def test_a_full_queue_answers_503_not_a_crash():
    from components.serving.app import create_app
    from components.serving.server import BackgroundServer
    from tests.serving.conftest import tiny_service

    service = tiny_service("ar")
    with BackgroundServer(create_app(service, max_queue=2)) as srv:
        report = run_load(srv.base_url, MODEL, requests=12, max_tokens=24)
        assert 0 < report["errors"] < 12  # the overflow is refused...
        assert all("503" in e or "busy" in e for e in report["error_samples"])
        # ...and the server still serves afterwards.
        assert run_load(srv.base_url, MODEL, requests=1, max_tokens=2)["errors"] == 0
