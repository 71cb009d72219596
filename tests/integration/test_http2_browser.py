"""A real browser over HTTP/2: headless Chromium (Debian's chromium) loads a page with 20 assets
from a tenant's TLS vhost; the access log shows every request over HTTP/2.0, served by a process
running as the tenant's uid."""
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import make_site, two_environments
from harness import Apache, free_port, proc_ids, serving
from test_tls import make_cert

ASSETS = 20


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is not installed (scripts/install-deps.sh installs it)"
    return found


@pytest.fixture(scope="module")
def server(module, accounts):
    port = free_port()
    apache = Apache("", name="h2browser")
    uid, gid = accounts["peruser-a"]
    site = make_site(apache.root, uid, gid, "a")
    os.makedirs(os.path.join(site, "img"))
    for n in range(ASSETS):
        with open(os.path.join(site, "img", f"{n}.svg"), "w") as f:
            f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text y="9">{n}</text></svg>')
        os.chmod(os.path.join(site, "img", f"{n}.svg"), 0o644)
    with open(os.path.join(site, "page.html"), "w") as f:
        f.write("<!doctype html><html><body>\n" + "".join(f'<img src="/img/{n}.svg">\n' for n in range(ASSETS))
                + "<p id=done>loaded</p></body></html>\n")
    os.chmod(os.path.join(site, "page.html"), 0o644)
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "a.test")
    apache.write_config(f"""
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
Protocols h2 http/1.1
Listen 127.0.0.1:{port} https
MinMultiplexers 1
{two_environments(apache.root)}
LogFormat "%H %P %U %>s" h2check
<VirtualHost 127.0.0.1:{port}>
    ServerName a.test
    DocumentRoot {site}
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    ServerEnvironment env-a
    CustomLog {apache.root}/logs/h2check.log h2check
</VirtualHost>
""")
    apache.port = port
    apache.uid = uid
    apache.start(ports=(port,))
    yield from serving(apache)


def test_chromium_loads_a_page_and_its_assets_over_http2_in_the_tenants_workers(server):
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        out = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={profile}", "--ignore-certificate-errors",
                              "--host-resolver-rules=MAP a.test 127.0.0.1", "--virtual-time-budget=5000",
                              "--dump-dom", f"https://a.test:{server.port}/page.html"],
                             capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert "loaded" in out.stdout, (out.stdout[-500:], out.stderr[-2000:])
    with open(os.path.join(server.root, "logs", "h2check.log")) as f:
        lines = [line.split() for line in f if line.strip()]
    assets = [fields for fields in lines if fields[2].startswith("/img/")]
    assert sorted(fields[2] for fields in assets) == sorted(f"/img/{n}.svg" for n in range(ASSETS)), lines
    page = [fields for fields in lines if fields[2] == "/page.html"]
    assert page, lines
    for protocol, pid, path, status in page + assets:
        assert protocol == "HTTP/2.0", (path, protocol)
        assert status == "200", (path, status)
        assert proc_ids(int(pid))[0] == server.uid, f"{path} served by pid {pid} (uid {proc_ids(int(pid))[0]})"
