"""With a module that is not thread-safe (Debian's mod_php), no worker ever runs two requests at
once, and HTTP/2 stays on: mod_http2 runs a connection's streams on its own threads inside the
worker, so each stream's request waits for the worker's turn (Worker/RequestTurns.swift). One
notice at startup says so. Without such a module, streams run at once as mod_http2 likes.

Kept from the urgent issue that found the crash (20 streams of PHP at once corrupted PHP's state,
then signal 11): the same h2load run must still be answered in full, with no damage."""
import os
import re
import socket
import ssl
import subprocess

import pytest

from conftest import make_site, php_config, two_environments
from harness import Apache, free_port, serving
from test_tls import make_cert

# Some string work, as in the report that found the crash (PHP state corrupted on mod_http2's
# threads, then signal 11).
WORK_PHP = """<?php
$s = '';
for ($i = 0; $i < 3000; $i++) { $s = md5($s . $i) . substr($s, 0, 64); }
echo strlen($s), " ", getmypid(), "\\n";
"""

# A non-blocking exclusive lock on a file of this worker (each request opens it anew, so two
# requests at once in one process conflict, threads or not): an overlap is written down.
OVERLAP_PHP = """<?php
$dir = '%s';
$f = fopen("$dir/lock-" . getmypid(), 'c');
if (!flock($f, LOCK_EX | LOCK_NB)) {
    file_put_contents("$dir/overlaps", getmypid() . "\\n", FILE_APPEND | LOCK_EX);
    echo "overlap\\n";
    exit;
}
usleep(20000);
file_put_contents("$dir/served", getmypid() . "\\n", FILE_APPEND | LOCK_EX);
flock($f, LOCK_UN);
echo "alone\\n";
"""

SLOW_PHP = """<?php
sleep(4);
echo "slept\\n";
"""

def start(accounts, with_php):
    port, tls_port = free_port(), free_port()
    apache = Apache("", name="h2safe")
    site = make_site(apache.root, *accounts["peruser-a"], "a")
    locks = os.path.join(apache.root, "locks")
    os.makedirs(locks)
    os.chown(locks, *accounts["peruser-a"])
    apache.locks = locks
    for name, text in (("w.php", WORK_PHP), ("overlap.php", OVERLAP_PHP % locks), ("slow.php", SLOW_PHP)):
        with open(os.path.join(site, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(site, name), 0o644)
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "a.test")
    php = php_config() if with_php else ""
    apache.write_config(f"""
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
{php}
Protocols h2 h2c http/1.1
# h2load --h1 pipelines all 400 requests on one connection.
MaxKeepAliveRequests 0
# A stream that waits longer than this for its worker's turn is answered 503.
Timeout 2
Listen 127.0.0.1:{port}
Listen 127.0.0.1:{tls_port} https
MinMultiplexers 1
MinSpareProcessors 0
{two_environments(apache.root)}
<VirtualHost 127.0.0.1:{port}>
    ServerName a.test
    DocumentRoot {site}
    ServerEnvironment env-a
</VirtualHost>
<VirtualHost 127.0.0.1:{tls_port}>
    ServerName a.test
    DocumentRoot {site}
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    ServerEnvironment env-a
</VirtualHost>
""")
    apache.port, apache.tls_port = port, tls_port
    apache.start(ports=(port, tls_port))
    apache.wait_children(3)
    return apache


@pytest.fixture(scope="module")
def with_php(module, accounts):
    apache = start(accounts, with_php=True)
    yield from serving(apache, log_tail=3000)


@pytest.fixture(scope="module")
def without_php(module, accounts):
    apache = start(accounts, with_php=False)
    yield from serving(apache)


def h2load(*args):
    out = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert m, out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {"total": int(m.group(1)), "done": int(m.group(3)), "succeeded": int(m.group(4)),
            "2xx": int(codes.group(1)) if codes else 0, "output": out}


def assert_no_damage(apache):
    log = apache.read_error_log()
    assert "killed by signal" not in log, log[-3000:]
    assert "PHP Warning" not in log and "PHP Fatal" not in log, log[-3000:]


def test_prior_knowledge_h2c_with_mod_php_answers_every_stream(with_php):
    result = h2load("-n", "400", "-c", "1", "-m", "20", f"http://127.0.0.1:{with_php.port}/w.php")
    assert "Application protocol: h2c" in result["output"], result["output"]
    assert result["succeeded"] == 400 and result["2xx"] == 400, result["output"]
    assert_no_damage(with_php)


def test_the_same_load_over_http1_is_answered_in_full(with_php):
    result = h2load("--h1", "-n", "400", "-c", "1", "-m", "20", f"http://127.0.0.1:{with_php.port}/w.php")
    assert result["succeeded"] == 400 and result["2xx"] == 400, result["output"]
    assert_no_damage(with_php)


def test_h2_over_tls_with_mod_php_answers_every_stream(with_php):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", with_php.tls_port), timeout=10),
                             server_hostname="a.test") as sock:
        assert sock.selected_alpn_protocol() == "h2"
    result = h2load("-n", "200", "-c", "1", "-m", "20", f"https://127.0.0.1:{with_php.tls_port}/w.php")
    assert "Application protocol: h2" in result["output"], result["output"]
    assert result["succeeded"] == 200 and result["2xx"] == 200, result["output"]
    assert_no_damage(with_php)


def test_upgrade_h2c_with_mod_php_speaks_http2(with_php):
    out = subprocess.run(["curl", "-s", "--http2", "-H", "Host: a.test", "-o", "/dev/null",
                          "-w", "%{http_code} %{http_version}", f"http://127.0.0.1:{with_php.port}/w.php"],
                         capture_output=True, text=True, timeout=20).stdout
    assert out == "200 2", out
    assert_no_damage(with_php)


def test_a_hundred_streams_at_once_never_overlap_in_a_worker(with_php):
    """100 concurrent streams of a PHP script over one h2c connection: each takes a non-blocking
    exclusive lock on its worker's file for 20 ms and writes down any overlap. mod_http2 has four
    threads in the worker; without the turn they overlap (and PHP's state breaks)."""
    result = h2load("-n", "100", "-c", "1", "-m", "100", f"http://127.0.0.1:{with_php.port}/overlap.php")
    assert "Application protocol: h2c" in result["output"], result["output"]
    assert result["2xx"] == 100, result["output"]
    assert not os.path.exists(os.path.join(with_php.locks, "overlaps")), \
        open(os.path.join(with_php.locks, "overlaps")).read()
    with open(os.path.join(with_php.locks, "served")) as f:
        assert len(f.read().split()) == 100
    assert_no_damage(with_php)


def test_a_stream_that_waits_past_timeout_for_its_turn_gets_503(with_php):
    """Timeout 2: beside a stream that sleeps 4 s, a second stream on the same connection waits
    for the worker's turn no longer than that, and is answered 503; the first completes."""
    # Two streams at once on one connection, both to the 4 s script: which one mod_http2 runs
    # first is not ours to choose, and either way the other one waits past Timeout.
    result = h2load("-n", "2", "-c", "1", "-m", "2", f"http://127.0.0.1:{with_php.port}/slow.php")
    assert "Application protocol: h2c" in result["output"], result["output"]
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", result["output"])
    assert codes and codes.groups() == ("1", "0", "0", "1"), result["output"]
    assert "waited Timeout for its turn" in with_php.read_error_log()
    assert_no_damage(with_php)


def test_one_notice_at_startup_says_why(with_php):
    log = with_php.read_error_log()
    assert log.count("mod_php (built without thread safety, as Debian's is) is loaded and is not thread-safe: "
                     "each worker runs the requests of HTTP/2 streams one at a time") == 1, log[-2000:]


def test_without_mod_php_http2_stays_on(without_php):
    result = h2load("-n", "400", "-c", "1", "-m", "20", f"http://127.0.0.1:{without_php.port}/index.html")
    assert result["succeeded"] == 400 and result["2xx"] == 400, result["output"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", without_php.tls_port), timeout=10),
                             server_hostname="a.test") as sock:
        assert sock.selected_alpn_protocol() == "h2"
    assert "one at a time" not in without_php.read_error_log()
