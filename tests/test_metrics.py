"""
Prometheus metrics and /health: the counts the upload machine, the registry
and the WebSocket adapter keep (driven with a Clock), and the pages scraped
from a real in-process server and from the installed twistd.
"""

from __future__ import annotations

import inspect
import os
import shutil

import pytest
import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.task import Clock

from conftest import start_server
from incoming.config import Settings
from incoming.handover import DONE, HandoverFailed
from incoming.metrics import CANCEL_KINDS, Metrics, NullMetrics
from fakes import create, embedded_registry
from incoming.upload import REPLY_ERROR
from test_twistd import TwistdServer, backend, free_port, new_upload  # noqa: F401 (fixture)
from test_upload_machine import FakeBackend, FakeChannel, data_of
from wsclient import upload

CHUNK = 1024
IDLE = 1000.0


# ---- the Metrics object -----------------------------------------------------


def test_null_metrics_answers_every_call_metrics_has():
    def public(cls):
        return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    assert public(NullMetrics) == public(Metrics)


def test_two_servers_in_one_process_count_apart():
    one, two = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    one.upload_created()
    assert one.registry.get_sample_value("incoming_uploads_created_total") == 1
    assert two.registry.get_sample_value("incoming_uploads_created_total") == 0


def test_every_cancel_reason_is_exported_from_the_start():
    metrics = Metrics(CollectorRegistry())
    for kind in CANCEL_KINDS:
        value = metrics.registry.get_sample_value(
            "incoming_uploads_cancelled_total", {"reason": kind})
        assert value == 0, kind


# ---- what the upload machine counts (Clock, fake browser and backend) --------


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def metrics():
    return Metrics(CollectorRegistry())


@pytest.fixture
def machine_backend():
    return FakeBackend()


@pytest.fixture
def make_registry(tmp_path, clock, machine_backend, metrics):
    def make(**overrides):
        settings = Settings(storage_dir=str(tmp_path / "storage"), chunk_size_kb=1,
                            idle_timeout=IDLE, **overrides)
        return embedded_registry(settings, machine_backend, clock, metrics=metrics)

    return make


def sample(metrics, name, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def cancelled(metrics) -> dict:
    """{reason: count} of the reasons that counted at least once."""
    counts = {k: sample(metrics, "incoming_uploads_cancelled_total", reason=k)
              for k in CANCEL_KINDS}
    return {k: v for k, v in counts.items() if v}


def started(registry, length=3 * CHUNK):
    upload = create(registry)
    channel = FakeChannel()
    upload.connect(channel, length, "f.bin")
    return upload, channel


def test_a_finished_upload_counts_bytes_chunks_and_the_handover(
        make_registry, metrics, clock, machine_backend):
    registry = make_registry()
    upload, channel = started(registry)
    for _ in range(3):
        upload.receive(channel, data_of(CHUNK))
    assert sample(metrics, "incoming_open_uploads") == 1
    clock.advance(2.5)  # the backend takes its time
    machine_backend.handovers[0].deferred.callback(DONE)
    assert upload.state == "finished"
    assert sample(metrics, "incoming_uploads_created_total") == 1
    assert sample(metrics, "incoming_uploads_finished_total") == 1
    assert sample(metrics, "incoming_received_bytes_total") == 3 * CHUNK
    assert sample(metrics, "incoming_chunk_write_duration_seconds_count") == 3
    assert sample(metrics, "incoming_handover_duration_seconds_count") == 1
    assert sample(metrics, "incoming_handover_duration_seconds_sum") == 2.5
    assert sample(metrics, "incoming_handover_failures_total") == 0
    assert sample(metrics, "incoming_open_uploads") == 0
    assert cancelled(metrics) == {}


def test_cancel_reasons_are_counted_by_kind(make_registry, metrics, clock, machine_backend,
                                            tmp_path):
    registry = make_registry(max_file_size=10 * CHUNK)

    upload, channel = started(registry)  # the browser's MsgCancel
    upload.cancel_from_browser(channel, "cancelled by the browser: bye")
    upload, channel = started(registry)  # the browser's MsgError
    upload.cancel_from_browser(channel, "error from frontend: oops", REPLY_ERROR)
    assert cancelled(metrics) == {"browser": 2}

    upload, channel = started(registry)
    upload.cancel("cancelled by the backend")
    upload, channel = started(registry)
    upload.receive(channel, data_of(CHUNK + 1))  # larger than the chunk size
    upload, channel = started(registry, length=11 * CHUNK)
    assert upload.state == "cancelled"
    upload = create(registry)
    open(tmp_path / "storage" / f"{upload.ticket.id}.part", "wb").close()
    upload.connect(FakeChannel(), CHUNK, "f.bin")  # its .part file cannot be created
    assert upload.state == "cancelled"
    upload, channel = started(registry, length=CHUNK)
    upload.receive(channel, data_of(CHUNK))
    machine_backend.handovers[-1].deferred.errback(HandoverFailed("backend answered 500"))
    create(registry)
    clock.advance(IDLE + 1)  # only the last one is still open: it idles out

    assert cancelled(metrics) == {"browser": 2, "backend": 1, "protocol": 1, "too_large": 1,
                                  "storage": 1, "handover": 1, "idle": 1}
    assert sample(metrics, "incoming_handover_failures_total") == 1
    assert sample(metrics, "incoming_uploads_created_total") == 8
    assert sample(metrics, "incoming_uploads_finished_total") == 0
    assert sample(metrics, "incoming_open_uploads") == 0


def test_a_cancel_that_changes_nothing_is_not_counted_twice(make_registry, metrics):
    registry = make_registry()
    upload, channel = started(registry)
    upload.cancel("first")
    upload.cancel("second")
    assert cancelled(metrics) == {"backend": 1}


def test_no_finish_upload_in_time_is_a_handover_failure(make_registry, metrics, clock,
                                                         machine_backend):
    registry = make_registry(handover_confirm_timeout=100.0)
    upload, channel = started(registry, length=CHUNK)
    upload.receive(channel, data_of(CHUNK))
    machine_backend.handovers[0].deferred.callback("wait")
    clock.advance(101)
    assert upload.state == "cancelled"
    assert cancelled(metrics) == {"handover": 1}
    assert sample(metrics, "incoming_handover_failures_total") == 1
    assert sample(metrics, "incoming_handover_duration_seconds_count") == 1


# ---- scraping a real server -------------------------------------------------


def parse(text: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of an exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def get(url: str, **kw):
    response = await treq.get(url, persistent=False, **kw)
    return response, await response.text()


async def scrape(url: str) -> dict:
    response, text = await get(url)
    assert response.code == 200, text
    content_type = response.headers.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"text/plain; version=0.0.4"), content_type
    return parse(text)


async def eventually(check, timeout=5.0):
    """Retry ``check`` (an async callable) until it passes: the server may
    see a connection close a moment after the client."""
    for _ in range(int(timeout / 0.05)):
        try:
            return await check()
        except AssertionError:
            await task.deferLater(reactor, 0.05, lambda: None)
    return await check()


def assert_after_one_done_and_one_cancelled(samples, received, reason):
    assert value(samples, "incoming_uploads_created_total") == 2
    assert value(samples, "incoming_uploads_finished_total") == 1
    for kind in CANCEL_KINDS:
        expected = 1 if kind == reason else 0
        assert value(samples, "incoming_uploads_cancelled_total", reason=kind) == expected, kind
    assert value(samples, "incoming_received_bytes_total") == received
    assert value(samples, "incoming_open_uploads") == 0
    assert value(samples, "incoming_websocket_connections") == 0
    assert value(samples, "incoming_handover_duration_seconds_count") == 1
    assert value(samples, "incoming_handover_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "incoming_handover_failures_total") == 0
    assert value(samples, "incoming_chunk_write_duration_seconds_count") >= 2


@pytest_twisted.ensureDeferred
async def test_metrics_and_health_of_an_in_process_server(tmp_path):
    server, stop = await start_server(tmp_path)  # 64 KiB chunks
    base = f"http://127.0.0.1:{server.port}"
    try:
        done = os.urandom(200 * 1024 + 7)
        outcome = await upload(server.port, await server.new_upload(), data=done)
        assert outcome.last()[0] == "MsgAllDone"
        outcome = await upload(server.port, await server.new_upload(),
                               data=os.urandom(300 * 1024), stop_at=128 * 1024,
                               action="cancel")
        assert outcome.last()[0] == "MsgCancelAck"

        async def counted():
            samples = await scrape(base + "/metrics")
            assert_after_one_done_and_one_cancelled(samples, len(done) + 128 * 1024, "browser")
            assert value(samples, "incoming_chunk_write_duration_seconds_count") == 4 + 2
            return samples

        samples = await eventually(counted)
        assert value(samples, "incoming_handover_duration_seconds_sum") > 0

        response, text = await get(
            base + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")

        response, text = await get(base + "/health")
        assert (response.code, text) == (200, "ok\n")
        assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
        shutil.rmtree(server.storage_dir)  # e.g. a lost mount
        response, text = await get(base + "/health")
        assert response.code == 503
        assert "not writable" in text
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_metrics_count_open_websockets(tmp_path):
    server, stop = await start_server(tmp_path)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        ticket = await server.new_upload()
        closing = upload(server.port, ticket, data=os.urandom(200 * 1024),
                         stop_at=64 * 1024, action="idle")

        async def one_open():
            assert server.registry.get(ticket).channel is not None
            samples = await scrape(url)
            assert value(samples, "incoming_websocket_connections") == 1
            assert value(samples, "incoming_open_uploads") == 1

        await eventually(one_open)
        server.registry.get(ticket).channel.close()
        await closing

        async def none_open():
            samples = await scrape(url)
            assert value(samples, "incoming_websocket_connections") == 0
            assert value(samples, "incoming_open_uploads") == 1  # paused, not ended

        await eventually(none_open)
    finally:
        await stop()


# ---- scraping the installed twistd ------------------------------------------


async def upload_one_and_cancel_one(server, backend):
    """Through twistd: one upload handed over, one cancelled by the backend."""
    data = os.urandom(1024 * 1024 + 3)
    outcome = await upload(server.port, await new_upload(server, backend), data=data)
    assert outcome.last()[0] == "MsgAllDone"
    ticket = await new_upload(server, backend, backendSecret="s3cret")
    response = await treq.post(server.url("cancel_upload"), persistent=False,
                                params={"id": ticket, "backendSecret": "s3cret"})
    assert response.code == 200, await response.text()
    return len(data)


@pytest_twisted.ensureDeferred
async def test_twistd_serves_metrics_and_health_on_its_port(tmp_path, backend):
    server = TwistdServer(tmp_path)
    base = f"http://127.0.0.1:{server.port}"
    try:
        await server.ready()
        received = await upload_one_and_cancel_one(server, backend)

        async def counted():
            samples = await scrape(base + "/metrics")
            assert_after_one_done_and_one_cancelled(samples, received, "backend")
            return samples

        samples = await eventually(counted)
        assert value(samples, "process_open_fds") > 0  # the process metrics are there
        response, text = await get(base + "/health")
        assert (response.code, text) == (200, "ok\n")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_twistd_metrics_port_moves_metrics_off_the_main_port(tmp_path, backend):
    metrics_port = free_port()
    server = TwistdServer(tmp_path, "--metrics-port", f"tcp:{metrics_port}:interface=127.0.0.1")
    try:
        await server.ready()
        received = await upload_one_and_cancel_one(server, backend)

        async def counted():
            samples = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            assert_after_one_done_and_one_cancelled(samples, received, "backend")

        await eventually(counted)
        response, _ = await get(f"http://127.0.0.1:{server.port}/metrics")
        assert response.code == 404
        for port in (server.port, metrics_port):
            response, text = await get(f"http://127.0.0.1:{port}/health")
            assert (response.code, text) == (200, "ok\n")
        library = f"http://127.0.0.1:{metrics_port}/incoming/0.1/frontend/incoming.js"
        response, _ = await get(library)
        assert response.code == 404  # the metrics port serves nothing else
    finally:
        await server.stop()


# ---- --metrics-port ----------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    ([], ""),
    (["--metrics-port", "9100"], "tcp:9100"),
    (["--metrics-port", "tcp:9100:interface=127.0.0.1"], "tcp:9100:interface=127.0.0.1"),
])
def test_metrics_port_option(tmp_path, monkeypatch, argv, expected):
    from incoming.tap import Options

    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(argv)
    assert options.settings.metrics_listen == expected


def test_metrics_port_config_key_and_a_bad_value(tmp_path, monkeypatch):
    from twisted.python.usage import UsageError

    from incoming.tap import Options

    monkeypatch.chdir(tmp_path)
    (tmp_path / "incoming_cfg.yaml").write_text("MetricsPort: 9100\n")
    options = Options()
    options.parseOptions(["--config", "incoming_cfg.yaml"])
    assert options.settings.metrics_listen == "tcp:9100"
    with pytest.raises(UsageError, match="metrics-port"):
        Options().parseOptions(["--metrics-port", "nosuchtype:9100"])
