"""With a module that is not thread-safe (Debian's mod_php), no worker ever runs two requests at
once: mod_http2 would run a connection's streams concurrently on its own threads, so HTTP/2 (h2
and h2c: prior knowledge, Upgrade, ALPN) is switched off and clients get HTTP/1.1, with one notice
at startup. Without such a module, HTTP/2 stays on.

This is the stopgap of the urgent issue; the full HTTP/2 issue replaces it with real support and
must keep this test passing."""
import os
import re
import socket
import ssl
import subprocess

import pytest

from conftest import make_site, php_module, two_environments
from harness import Apache, free_port
from test_tls import make_cert

# Some string work, as in the report that found the crash (PHP state corrupted on mod_http2's
# threads, then signal 11).
WORK_PHP = """<?php
$s = '';
for ($i = 0; $i < 3000; $i++) { $s = md5($s . $i) . substr($s, 0, 64); }
echo strlen($s), " ", getmypid(), "\\n";
"""

def start(accounts, with_php):
    port, tls_port = free_port(), free_port()
    apache = Apache("", name="h2safe")
    site = make_site(apache.root, *accounts["peruser-a"], "a")
    with open(os.path.join(site, "w.php"), "w") as f:
        f.write(WORK_PHP)
    os.chmod(os.path.join(site, "w.php"), 0o644)
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "a.test")
    php = f"""LoadModule php_module {php_module()}
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>""" if with_php else ""
    apache.write_config(f"""
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
{php}
Protocols h2 h2c http/1.1
# h2load --h1 pipelines all 400 requests on one connection.
MaxKeepAliveRequests 0
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
    yield apache
    apache.stop()
    print(apache.read_error_log()[-3000:])
    apache.cleanup()


@pytest.fixture(scope="module")
def without_php(module, accounts):
    apache = start(accounts, with_php=False)
    yield apache
    apache.stop()
    apache.cleanup()


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


def test_prior_knowledge_h2c_is_not_spoken_with_mod_php(with_php):
    result = h2load("-n", "400", "-c", "1", "-m", "20", f"http://127.0.0.1:{with_php.port}/w.php")
    # HTTP/2 is off: the preface is not taken as HTTP/2, so no stream runs at all.
    assert result["2xx"] == 0, result["output"]
    assert_no_damage(with_php)


def test_the_same_load_over_http1_is_answered_in_full(with_php):
    result = h2load("--h1", "-n", "400", "-c", "1", "-m", "20", f"http://127.0.0.1:{with_php.port}/w.php")
    assert result["succeeded"] == 400 and result["2xx"] == 400, result["output"]
    assert_no_damage(with_php)


def test_upgrade_h2c_stays_http1(with_php):
    out = subprocess.run(["curl", "-s", "--http2", "-H", "Host: a.test", "-o", "/dev/null",
                          "-w", "%{http_code} %{http_version}", f"http://127.0.0.1:{with_php.port}/w.php"],
                         capture_output=True, text=True, timeout=20).stdout
    assert out == "200 1.1", out
    assert_no_damage(with_php)


def test_alpn_offers_no_h2_with_mod_php(with_php):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", with_php.tls_port), timeout=10),
                             server_hostname="a.test") as sock:
        assert sock.selected_alpn_protocol() in (None, "http/1.1")


def test_one_notice_at_startup_says_why(with_php):
    log = with_php.read_error_log()
    assert log.count("HTTP/2 (h2 and h2c) is switched off in every virtual host: mod_php") == 1, log[-2000:]
    assert "not thread-safe" in log


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
    assert "is switched off" not in without_php.read_error_log()
