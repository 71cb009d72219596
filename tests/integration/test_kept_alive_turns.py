"""A kept-alive client that sends its next request at once does not keep its environment's
worker while another connection waits for it (PeruserCore/Scheduling/KeptAliveTurn.swift).

Environment `single` has one worker (MaxProcessors 1) and ProcessorWaitTimeout 2 s, and
MaxKeepAliveRequests 0, so nothing but the turn ends the busy client's hold: without it, the
connection that waits is answered 503 after 2 s while the busy one goes on."""
import http.client
import os
import ssl
import threading
import time

import pytest

from conftest import make_site, site_vhost
from harness import Apache, free_port, serving
from test_end_to_end import get
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
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
Listen 127.0.0.1:{port}
Listen 127.0.0.1:{tls_port} https
MinMultiplexers 1
MaxMultiplexers 1
ProcessorWaitTimeout 2 10
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
