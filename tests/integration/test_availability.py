"""ProcessorWaitTimeout availability, a multiplexer that never blocks, slow and bad clients."""
import re
import resource
import socket
import struct
import threading
import time

import pytest

from conftest import make_site, site_vhost
from harness import Apache, free_port, raw_request, read_maps, serving
from test_end_to_end import CGI, get
from test_process_management import in_background

# ChildTableLayout: header, one identity record per slot, then the environments' records.
IDENTITY_SIZE, HEADER, ENV_SIZE = 32, 64, 128
SERVER_LIMIT = 16


def table_availability(server, env):
    """Availability of environment `env` as published in the shared child table (read as root
    through the parent's mapping, exactly what the status page will show)."""
    parent = server.pid()
    start = next(int(l.split("-")[0], 16) for l in read_maps(parent).splitlines() if "peruser-child-table" in l)
    offset = HEADER + SERVER_LIMIT * IDENTITY_SIZE + env * ENV_SIZE
    with open(f"/proc/{parent}/mem", "rb", buffering=0) as mem:
        mem.seek(start + offset)
        record = mem.read(40)
    handed, _, _, dropped = struct.unpack("<4Q", record[:32])
    availability, waiting = struct.unpack("<2I", record[32:40])
    return {"availability": availability, "waiting": waiting, "dropped": dropped, "handed": handed}


def start_saturable(accounts, name, extra=""):
    """Environment `single` (one worker at most, as peruser-a) and `other` (two, as
    peruser-b), ProcessorWaitTimeout 2 10; `extra` adds configuration (a function of the port,
    or text)."""
    port = free_port()
    if callable(extra):
        extra = extra(port)
    apache = Apache("", name=name)
    a, b = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, *a, "a")
    b_site = make_site(apache.root, *b, "b")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
ServerLimit {SERVER_LIMIT}
MinMultiplexers 2
MaxMultiplexers 2
ProcessorWaitTimeout 2 10
{extra}
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor single>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MaxProcessors 1
    MinSpareProcessors 0
</Processor>
<Processor other>
    User peruser-b
    Group peruser-b
    MinProcessors 2
    MinSpareProcessors 1
</Processor>
{site_vhost(port, "single.test", a_site, "single")}
{site_vhost(port, "other.test", b_site, "other")}
""")
    apache.port = port
    apache.start(ports=(port,))
    apache.wait_children(2 + 1 + 2)
    return apache


@pytest.fixture
def saturable(module, accounts):
    apache = start_saturable(accounts, "avail")
    yield from serving(apache)


def timed_get(port, host, path):
    started = time.monotonic()
    status, body, resp = get(port, host, path)
    return status, time.monotonic() - started, resp, body


def test_saturated_environment_waits_then_drops_and_recovers(saturable):
    port = saturable.port
    latencies = []
    stop = threading.Event()

    def other_traffic():
        while not stop.is_set():
            started = time.monotonic()
            status, _, _ = get(port, "other.test", "/index.html")
            assert status == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)

    traffic = threading.Thread(target=other_traffic)
    traffic.start()
    try:
        assert table_availability(saturable, 0)["availability"] == 100
        busy = in_background(timed_get, port, "single.test", CGI + "?sleep=5")
        time.sleep(0.3)
        # Second request: waits (100% of 2 s), then 503 with Retry-After; availability 90%.
        status, waited, resp, _ = timed_get(port, "single.test", "/index.html")
        assert status == 503 and resp.getheader("Retry-After")
        assert 1.7 <= waited <= 2.8, waited
        t = table_availability(saturable, 0)
        assert t["availability"] == 90 and t["dropped"] == 1, t
        # Third: waits 90% of 2 s = 1.8 s, then 503; availability 80%.
        status, waited, _, _ = timed_get(port, "single.test", "/index.html")
        assert status == 503
        assert 1.5 <= waited <= 2.5, waited
        assert table_availability(saturable, 0)["availability"] == 80
        # Fourth: may wait 1.6 s; the worker frees up at about 5 s and takes it: 200, back to 100%.
        status, waited, _, body = timed_get(port, "single.test", "/index.html")
        assert status == 200 and body == "site a\n", (status, waited)
        busy[0].join()
        assert busy[1]["value"][0] == 200
        assert table_availability(saturable, 0)["availability"] == 100
    finally:
        stop.set()
        traffic.join()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nother environment during saturation: {len(latencies)} requests, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert len(latencies) > 50
    assert p99 < 0.5, "requests to another environment were held up"


def test_zero_availability_drops_at_once(saturable):
    port = saturable.port
    busy = in_background(timed_get, port, "single.test", CGI + "?sleep=12")
    time.sleep(0.3)
    waits = []
    for _ in range(11):
        status, waited, _, _ = timed_get(port, "single.test", "/index.html")
        assert status == 503
        waits.append(waited)
        if table_availability(saturable, 0)["availability"] == 0:
            break
    assert table_availability(saturable, 0)["availability"] == 0, waits
    status, waited, _, _ = timed_get(port, "single.test", "/index.html")
    assert status == 503 and waited < 0.5, waited
    busy[0].join()


def test_slowloris_does_not_starve_anyone(saturable):
    port = saturable.port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    slow = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        slow.append(s)
    request = b"GET / HTTP/1.1\r\nHost: other.test\r\nX-Slow: " + b"x" * 100
    try:
        worst = 0.0
        for second in range(4):
            for s in slow:
                try:
                    s.send(request[second:second + 1])
                except OSError:
                    pass
            for host in ("single.test", "other.test"):
                started = time.monotonic()
                status, _, _ = get(port, host, "/index.html")
                worst = max(worst, time.monotonic() - started)
                assert status == 200
            time.sleep(1)
        print(f"\nworst latency beside 200 slow clients: {worst * 1000:.1f} ms")
        assert worst < 1.0
        # MultiplexerHeadTimeout (5 s): the slow ones are closed (without a 408: like httpd,
        # the multiplexer answers 408 only after a whole request line, and these sent 4 bytes).
        time.sleep(2.5)
        answered = 0
        for s in slow:
            s.setblocking(True)
            s.settimeout(3)
            try:
                data = s.recv(100)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    answered += 1
            except OSError:
                pass
        assert answered >= 190, answered
    finally:
        for s in slow:
            s.close()
    assert "exit signal" not in saturable.read_error_log()


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: other\x00.test\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: other.test\r\nX: " + b"b" * 9000 + b"\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
])
def test_bad_heads_get_an_answer_or_a_close(saturable, data):
    reply = raw_request(saturable.port, data, read_timeout=10, shutdown_write=True)
    assert reply == b"" or re.match(rb"HTTP/1\.[01] [45]\d\d ", reply), reply[:200]
    assert get(saturable.port, "other.test", "/index.html")[0] == 200


def test_clients_that_vanish_mid_head_and_a_thousand_at_once(saturable):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", saturable.port))
        s.sendall(b"GET /index.html HTTP/1.1\r\nHo")
        s.close()
    many = [socket.create_connection(("127.0.0.1", saturable.port)) for _ in range(1000)]
    for s in many:
        s.close()
    time.sleep(1)
    for host in ("single.test", "other.test"):
        assert get(saturable.port, host, "/index.html")[0] == 200
    log = saturable.read_error_log()
    assert "exit signal" not in log and "killed by signal" not in log, log[-2000:]


def test_workers_cannot_see_the_multiplexers_state(saturable):
    kids = saturable.children()
    muxes = [pid for pid, uid, gid in kids if (uid, gid) == (33, 33)]
    workers = [pid for pid, uid, gid in kids if (uid, gid) != (33, 33)]
    assert muxes and workers
    assert all("peruser-multiplexer-state" in read_maps(pid) for pid in muxes)
    assert not any("peruser-multiplexer-state" in read_maps(pid) for pid in workers)
