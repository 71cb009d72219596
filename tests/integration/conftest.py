import os
import subprocess

import glob

import pytest

from harness import MODULE, Apache, ensure_account, free_port, serving

USERS = ("peruser-a", "peruser-b")

ID_CGI = """#!/bin/sh
# Reports who serves this request and what arrived.
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ',')"
echo "server=$SERVER_NAME remote=$REMOTE_ADDR port=$SERVER_PORT worker=$PPID"
case "$QUERY_STRING" in sleep=*) sleep "${QUERY_STRING#sleep=}";; esac
if [ -n "$CONTENT_LENGTH" ]; then
  echo "length=$CONTENT_LENGTH sha256=$(head -c "$CONTENT_LENGTH" | sha256sum | cut -d' ' -f1)"
fi
"""


def php_module():
    """Debian's mod_php (libapache2-mod-php), whatever its PHP version."""
    found = sorted(glob.glob("/usr/lib/apache2/modules/libphp*.so"))
    assert found, "libapache2-mod-php is not installed (scripts/install-deps.sh installs it)"
    return found[-1]


def php_config():
    """Configuration lines: mod_php loaded, and .php files handed to it."""
    return f"""LoadModule php_module {php_module()}
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>"""


@pytest.fixture(scope="session")
def module():
    if not os.path.exists(MODULE):
        subprocess.run(["make", "-C", os.path.dirname(os.path.dirname(os.path.dirname(MODULE)))],
                       check=True)
    return MODULE


@pytest.fixture(scope="session")
def accounts():
    return {name: ensure_account(name) for name in USERS}


def make_site(root, owner_uid, owner_gid, name):
    """A document root owned by the environment's user, with a private file and the id CGI."""
    site = os.path.join(root, name)
    os.makedirs(os.path.join(site, "cgi-bin"))
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write(f"site {name}\n")
    secret = os.path.join(site, "secret.txt")
    with open(secret, "w") as f:
        f.write(f"secret of {name}\n")
    with open(os.path.join(site, "id.php"), "w") as f:
        f.write('<?php echo "uid=", posix_getuid(), " gid=", posix_getgid(), " groups=", '
                'implode(",", posix_getgroups()), "\\nsapi=", PHP_SAPI, "\\npid=", getmypid(), "\\n";\n')
    os.chmod(os.path.join(site, "id.php"), 0o644)
    cgi = os.path.join(site, "cgi-bin", "id.cgi")
    with open(cgi, "w") as f:
        f.write(ID_CGI)
    for path, mode in ((site, 0o755), (os.path.join(site, "cgi-bin"), 0o755),
                       (os.path.join(site, "index.html"), 0o644), (secret, 0o600), (cgi, 0o755)):
        os.chown(path, owner_uid, owner_gid)
        os.chmod(path, mode)
    return site


def site_vhost(port, name, site, environment):
    """A vhost of the suites' usual shape: `name` on 127.0.0.1:`port`, serving `site` and its
    cgi-bin, in `environment`."""
    return f"""<VirtualHost 127.0.0.1:{port}>
    ServerName {name}
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    ServerEnvironment {environment}
</VirtualHost>"""


def cgi_root(root):
    """Everything under `root` served, CGI allowed."""
    return f"""<Directory {root}>
    Require all granted
    Options +ExecCGI
</Directory>
"""


def processor(name, account, *lines):
    """A <Processor> block running as `account` (user and group), with `lines` inside."""
    body = "".join(f"    {line}\n" for line in (f"User {account}", f"Group {account}", *lines))
    return f"<Processor {name}>\n{body}</Processor>\n"


def two_environments(root, *lines):
    """CGI allowed under `root`, and environments env-a (peruser-a) and env-b (peruser-b) with
    one worker each and `lines` inside both: the common part of the suites' configurations."""
    return (cgi_root(root) + processor("env-a", "peruser-a", "MinProcessors 1", *lines)
            + processor("env-b", "peruser-b", "MinProcessors 1", *lines))


@pytest.fixture(scope="session")
def server(module, accounts):
    """Two name-based vhosts on one port (own environments), one vhost without environment,
    and an address-based vhost on a second port."""
    port, ip_port = free_port(), free_port()
    apache = Apache("")
    (a_uid, a_gid), (b_uid, b_gid) = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, a_uid, a_gid, "a")
    b_site = make_site(apache.root, b_uid, b_gid, "b")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
Listen 127.0.0.1:{ip_port}
MinMultiplexers 2
MinSpareProcessors 0
{php_config()}
{cgi_root(apache.root)}{processor("env-a", "peruser-a", "MinProcessors 1")}{processor("env-b", "peruser-b", "MinProcessors 2")}<VirtualHost 127.0.0.1:{port}>
    ServerName a.test
    ServerAlias *.wild-a.test
    DocumentRoot {a_site}
    ScriptAlias /cgi-bin/ {a_site}/cgi-bin/
    ServerEnvironment env-a
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName b.test
    ServerAlias www.b.test
    DocumentRoot {b_site}
    ScriptAlias /cgi-bin/ {b_site}/cgi-bin/
    Alias /a-files/ {a_site}/
    ServerEnvironment env-b
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName noenv.test
    DocumentRoot {b_site}
</VirtualHost>
{site_vhost(ip_port, "ip.test", b_site, "env-b")}
""")
    apache.port, apache.ip_port = port, ip_port
    apache.uids = {"a": (a_uid, a_gid), "b": (b_uid, b_gid)}
    apache.start(ports=(port, ip_port))
    apache.wait_children(5)  # 2 multiplexers, 1 worker of env-a, 2 of env-b
    yield from serving(apache, log_tail=3000)
