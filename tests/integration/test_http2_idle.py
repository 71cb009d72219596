"""Idle HTTP/2 connections cannot starve an environment. Browsers keep h2 connections open between
page loads, and each holds a worker. While connections wait for the environment, its workers
end their idle sessions with GOAWAY (mod_http2 is told the server is stopping) and take the
waiting connections; the status page counts the workers holding HTTP/2 connections."""
import socket
import time

import h2.events
import pytest

from conftest import cgi_root, make_site, processor, site_vhost, two_environments
from harness import Apache, free_port, serving
from test_boundary_http2 import H2Client, uid_in
from test_end_to_end import get
from test_status import auto_lines


def h2c_basics(port):
    """h2c on `port`, one multiplexer, no spares, and keep-alive long enough that only the
    GOAWAY can free a worker within a test."""
    return f"""LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
Protocols h2c http/1.1
KeepAliveTimeout 60
Timeout 60
ProcessorWaitTimeout 30
Listen 127.0.0.1:{port}
MinMultiplexers 1
MinSpareProcessors 0
MaxClientShare 100
"""


@pytest.fixture(scope="module")
def server(module, accounts):
    port = free_port()
    apache = Apache("", name="h2idle")
    a_site = make_site(apache.root, *accounts["peruser-a"], "a")
    b_site = make_site(apache.root, *accounts["peruser-b"], "b")
    # env-a: two workers, both started (the first environment of two_environments): the two
    # browsers of the test find them idle, with nothing waiting.
    environments = two_environments(apache.root).replace("MinProcessors 1", "MinProcessors 2\n    MaxProcessors 2", 1)
    apache.write_config(f"""
{h2c_basics(port)}LoadModule status_module /usr/lib/apache2/modules/mod_status.so
{environments}
{site_vhost(port, "a.test", a_site, "env-a")}
<VirtualHost 127.0.0.1:{port}>
    ServerName b.test
    DocumentRoot {b_site}
    ScriptAlias /cgi-bin/ {b_site}/cgi-bin/
    ServerEnvironment env-b
    <Location /server-status>
        SetHandler server-status
    </Location>
</VirtualHost>
""")
    apache.port = port
    apache.start(ports=(port,))
    apache.wait_children(4)  # a multiplexer, env-a's two workers, env-b's
    apache.ids = {"a.test": accounts["peruser-a"], "b.test": accounts["peruser-b"]}
    yield from serving(apache, log_tail=4000)


def env_a(server):
    status, body, _ = get(server.port, "b.test", "/server-status?auto")
    assert status == 200
    return auto_lines(body)["env-a"]


def session_end(sock, client, wait):
    """How the server ended this h2 connection within `wait` seconds: "goaway" (a GOAWAY frame
    came), "closed" (without one), or None (still open)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionError:
            return "closed"
        if not data:
            return "closed"
        for event in client.conn.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                assert event.error_code == 0, f"GOAWAY with error {event.error_code}"
                return "goaway"
    return None


def test_idle_h2_connections_give_their_workers_to_waiting_connections(server):
    # Both of env-a's workers up and idle first: a browser queued behind the other's idle
    # session would end it (which is the point of this module, but not of this first step).
    deadline = time.monotonic() + 20
    while env_a(server)["idle"] != "2" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env_a(server)["idle"] == "2", env_a(server)
    held = []
    try:
        # Two browsers: one request each, then idle, holding env-a's two workers.
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            client = H2Client(sock)
            status, body = client.request("a.test", "/cgi-bin/id.cgi")
            assert status == 200 and uid_in(body) == server.ids["a.test"][0], (status, body)
            held.append((sock, client))
        line = env_a(server)
        assert line["alive"] == "2" and line["h2"] == "2", line
        assert int(line["requests"]) >= 2, "HTTP/2 streams count as requests" 
        # Nothing waits: idle sessions are left alone.
        assert session_end(*held[0], wait=1.5) is None
        # A third client waits for env-a: the idle sessions end and it is served at once, where
        # it would otherwise wait for a KeepAliveTimeout of 60 s.
        started = time.monotonic()
        status, body, _ = get(server.port, "a.test", "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == server.ids["a.test"][0], (status, body)
        assert time.monotonic() - started < 5, "served while the h2 connections were idle"
        # mod_http2 says goodbye properly: GOAWAY with NO_ERROR.
        assert "goaway" in [session_end(sock, client, wait=3) for sock, client in held]
    finally:
        for sock, _ in held:
            sock.close()


def test_a_session_with_a_stream_running_is_not_ended(server):
    """A busy session keeps going under pressure: only idle ones yield."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        client = H2Client(sock)
        status, _ = client.request("a.test", "/index.html")
        assert status == 200
        assert env_a(server)["h2"] in ("1", "2")
    # After the connection ends, the worker no longer counts as HTTP/2.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and env_a(server)["h2"] != "0":
        time.sleep(0.2)
    assert env_a(server)["h2"] == "0"


def test_an_ended_session_leaves_the_workers_watchdogs_running(module, accounts):
    """mod_http2 ends an idle session when the server says it is stopping, and this MPM says so
    while connections wait for the environment. mod_watchdog's threads ask the same question
    and end for good on that answer, so it is given on the connection's thread only: here
    mod_heartbeat's watchdog (a singleton in env-a's only worker) goes on beating after a
    session of that worker was ended for a waiting connection."""
    port = free_port()
    beats = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beats.bind(("127.0.0.1", 0))
    beats.settimeout(0.2)
    apache = Apache("", name="h2watchdog")
    a_site = make_site(apache.root, *accounts["peruser-a"], "a")
    # One environment with one worker: the heartbeat's singleton can only run there.
    apache.write_config(f"""
{h2c_basics(port)}LoadModule heartbeat_module /usr/lib/apache2/modules/mod_heartbeat.so
HeartbeatAddress 127.0.0.1:{beats.getsockname()[1]}
{cgi_root(apache.root)}{processor("env-a", "peruser-a", "MinProcessors 1", "MaxProcessors 1")}{site_vhost(port, "a.test", a_site, "env-a")}
""")

    def count_beats(seconds):
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                count += beats.recv(4096).startswith(b"v=1")
            except socket.timeout:
                pass
        return count

    held = None
    try:
        apache.start(ports=(port,))
        assert count_beats(6) >= 2, "mod_heartbeat beats from env-a's worker"
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        client = H2Client(sock)
        status, body = client.request("a.test", "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == accounts["peruser-a"][0], (status, body)
        held = sock
        # A connection waits for the environment's only worker: the idle session is ended.
        status, body, _ = get(port, "a.test", "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == accounts["peruser-a"][0], (status, body)
        assert session_end(sock, client, wait=3) in ("goaway", "closed")
        # The same worker's watchdog goes on (it beats once a second).
        count_beats(1)
        assert count_beats(4) >= 3, "the watchdog ended with the HTTP/2 session"
    finally:
        if held is not None:
            held.close()
        beats.close()
        apache.stop()
        apache.cleanup()
