"""A kept-alive client that sends its next request at once, or an HTTP/2 client that always
keeps a stream running, does not keep its environment's worker while another connection waits
for it (PeruserCore/Scheduling/KeptAliveTurn.swift).

Environment `single` has one worker (MaxProcessors 1) and ProcessorWaitTimeout 3 s, and
MaxKeepAliveRequests 0, so nothing but the turn ends the busy client's hold: without it, the
connection that waits is answered 503 after 3 s while the busy one goes on."""
import http.client
import os
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import make_site, site_vhost
from harness import Apache, free_port, serving
from test_end_to_end import CGI, get
from test_process_management import in_background
from test_tls import make_cert

BUSY_SECONDS = 8


def start_single(accounts, extra=""):
    port, tls_port = free_port(), free_port()
    apache = Apache("", name="turns")
    site = make_site(apache.root, *accounts["peruser-a"], "a")
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "single.test")
    apache.write_config(f"""
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
Protocols h2c http/1.1
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
Listen 127.0.0.1:{port}
Listen 127.0.0.1:{tls_port} https
MinMultiplexers 1
MaxMultiplexers 1
ProcessorWaitTimeout 3 10
KeepAlive On
KeepAliveTimeout 5
MaxKeepAliveRequests 0
{extra}
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor single>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MaxProcessors 1
</Processor>
{site_vhost(port, "single.test", site, "single")}
<VirtualHost 127.0.0.1:{tls_port}>
    ServerName single.test
    DocumentRoot {site}
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    ServerEnvironment single
</VirtualHost>
""")
    apache.port, apache.tls_port = port, tls_port
    apache.start(ports=(port, tls_port))
    apache.wait_children(2)  # the multiplexer and the worker
    return apache


@pytest.fixture
def single(module, accounts):
    yield from serving(start_single(accounts), log_tail=3000)


@pytest.fixture
def single_without_hand_back(module, accounts):
    yield from serving(start_single(accounts, "PeruserHandBack Off"), log_tail=3000)


class BusyClient(threading.Thread):
    """One client asking for /index.html again as soon as each answer is read, on one kept-alive
    connection (reopened only if the server closes it), until stopped or BUSY_SECONDS."""

    def __init__(self, connect):
        super().__init__(daemon=True)
        self.connect = connect
        self.answers = []  # (status, Connection header)
        self.connections = 0
        self.failure = None
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + BUSY_SECONDS
        conn = None
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                if conn is None:
                    conn = self.connect()
                    self.connections += 1
                conn.request("GET", "/index.html", headers={"Host": "single.test"})
                resp = conn.getresponse()
                resp.read()
                self.answers.append((resp.status, resp.getheader("Connection")))
                if resp.will_close:
                    conn.close()
                    conn = None
        except Exception as e:  # reported by the test
            self.failure = e
        finally:
            if conn is not None:
                conn.close()

    def wait_for(self, count, seconds=10):
        deadline = time.monotonic() + seconds
        while len(self.answers) < count and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.answers) >= count


def cut_in(single, busy):
    """Starts `busy`, lets it settle on the worker, then asks once on a new connection; returns
    that status and how many answers the busy client had then."""
    busy.start()
    try:
        assert busy.wait_for(20), f"the busy client was not served: {busy.failure!r}"
        status, _, _ = get(single.port, "single.test", "/index.html")
        answered_before = len(busy.answers)
        # The busy client goes on being served after the other one's answer.
        assert busy.wait_for(answered_before + 20), f"the busy client stalled: {busy.failure!r}"
    finally:
        busy.stop.set()
        busy.join(BUSY_SECONDS + 15)
    assert busy.failure is None, busy.failure
    assert all(status == 200 for status, _ in busy.answers)
    return status, answered_before


def test_a_waiting_connection_is_served_while_a_kept_alive_client_keeps_asking(single):
    busy = BusyClient(lambda: http.client.HTTPConnection("127.0.0.1", single.port, timeout=15))
    status, _ = cut_in(single, busy)
    assert status == 200, "the waiting connection was not given the worker"
    # A plain connection goes back to the multiplexer and waits its turn: never closed.
    assert busy.connections == 1
    assert not any(connection == "close" for _, connection in busy.answers)


def test_a_kept_alive_tls_client_is_asked_to_reconnect_while_another_connection_waits(single):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    # HTTPSConnection sends SNI only for a name: connect by address with the vhost's name as SNI.
    class Named(http.client.HTTPSConnection):
        def connect(self):
            http.client.HTTPConnection.connect(self)
            self.sock = context.wrap_socket(self.sock, server_hostname="single.test")

    busy = BusyClient(lambda: Named("127.0.0.1", single.tls_port, timeout=15, context=context))
    status, _ = cut_in(single, busy)
    assert status == 200, "the waiting connection was not given the worker"
    # A TLS session cannot move: its turn ends with Connection: close, and the client reconnects.
    assert any(connection == "close" for _, connection in busy.answers), busy.answers[-5:]
    assert busy.connections >= 2


def test_with_hand_back_off_a_kept_alive_client_is_asked_to_reconnect_while_another_waits(single_without_hand_back):
    server = single_without_hand_back
    busy = BusyClient(lambda: http.client.HTTPConnection("127.0.0.1", server.port, timeout=15))
    status, _ = cut_in(server, busy)
    assert status == 200, "the waiting connection was not given the worker"
    assert any(connection == "close" for _, connection in busy.answers), busy.answers[-5:]
    assert busy.connections >= 2


class FrameReader:
    """Splits what the server sends into HTTP/2 frames. The h2 library stops at a GOAWAY (its
    connection is closed then, and the next frame raises), so after one the frames are read
    here: a stream's HEADERS (:status, through h2's own HPACK decoder), its end, or its reset."""

    def __init__(self, conn):
        self.conn = conn
        self.buffer = b""
        self.goaway = None

    def feed(self, data, streams):
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            frame, self.buffer = self.buffer[:9 + length], self.buffer[9 + length:]
            if self.goaway is None:
                self.through_h2(frame, streams)
            else:
                self.after_goaway(frame, streams)

    def through_h2(self, frame, streams):
        for event in self.conn.receive_data(frame):
            if isinstance(event, h2.events.ResponseReceived):
                streams[event.stream_id][0] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                streams[event.stream_id][1] = "ended"
            elif isinstance(event, h2.events.StreamReset):
                streams[event.stream_id][1] = "reset"
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event

    def after_goaway(self, frame, streams):
        kind, flags, stream = frame[3], frame[4], int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        payload = frame[9:]
        if stream not in streams:
            return
        if kind == 0x1:  # HEADERS
            if flags & 0x8:  # PADDED
                payload = payload[1:len(payload) - payload[0]]
            if flags & 0x20:  # PRIORITY
                payload = payload[5:]
            headers = dict(self.conn.decoder.decode(payload, raw=True))
            if b":status" in headers:
                streams[stream][0] = int(headers[b":status"])
        if kind == 0x3:  # RST_STREAM
            streams[stream][1] = "reset"
        elif kind in (0x0, 0x1) and flags & 0x1:  # END_STREAM
            streams[stream][1] = "ended"


def test_an_http2_session_that_always_has_a_stream_running_ends_with_goaway_while_another_waits(single):
    """h2c with prior knowledge: a CGI stream of 1 s started every 0.4 s, so the session is never
    idle (the idle-session rule alone never ends it). Once a connection waits, mod_http2 is told
    the server is stopping: GOAWAY (NO_ERROR), the streams it took are finished, and the worker
    takes the waiting connection."""
    sock = socket.create_connection(("127.0.0.1", single.port), timeout=15)
    sock.settimeout(0.1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams = {}  # stream id: [status, "ended" or "reset" or None]
    frames = FrameReader(conn)
    waiter = None
    started = time.monotonic()
    next_stream_at = started
    try:
        while time.monotonic() - started < 12:
            now = time.monotonic()
            if frames.goaway is None and now >= next_stream_at:
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, [(":method", "GET"), (":path", CGI + "?sleep=1"), (":scheme", "http"),
                                           (":authority", "single.test")], end_stream=True)
                sock.sendall(conn.data_to_send())
                streams[stream] = [None, None]
                next_stream_at = now + 0.4
            if waiter is None and now - started >= 1.5:
                waiter = in_background(get, single.port, "single.test", "/index.html")
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break  # the server closed the connection
            frames.feed(data, streams)
            if frames.goaway is None:
                sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    assert waiter is not None
    thread, result = waiter
    thread.join(15)
    assert "error" not in result, result
    assert result["value"][0] == 200, "the waiting connection was not given the worker"
    goaway = frames.goaway
    assert goaway is not None, "the busy session never got a GOAWAY"
    assert goaway.error_code == 0, goaway
    # Every stream the server took was answered whole before it closed the connection.
    taken = {sid: tuple(state) for sid, state in streams.items() if sid <= goaway.last_stream_id}
    assert len(taken) >= 3 and all(state == (200, "ended") for state in taken.values()), taken
