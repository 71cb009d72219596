"""The .deb as an admin meets it: built with `make deb` (lintian without errors), installed with
dpkg, enabled with a2enmod into a copy of /etc/apache2 and then into the real one, serving
under the right uid; the libapache2-mod-php sequence; removal leaving a working Apache.

This test changes the machine's /etc/apache2 and /var/lib/apache2 (a2query's state) and
restores both from a copy afterwards. Service starts by maintainer scripts are denied with
policy-rc.d for its duration; the test starts each Apache itself, in its own session, on
127.0.0.1 only, and stops it by the pid in its PidFile."""
import glob
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request

import pytest

from harness import free_port, stop_pid as stop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "libapache2-mpm-peruser"
POLICY = "/usr/sbin/policy-rc.d"
STATE = "/var/lib/apache2"
ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def run(*command, env=None, check=True):
    result = subprocess.run(list(command), capture_output=True, text=True, env=env or ENV, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def enabled_modules(confdir="/etc/apache2"):
    return {os.path.basename(p)[:-5] for p in glob.glob(f"{confdir}/mods-enabled/*.load")}


SITES = (("alice", "peruser-a"), ("bob", "peruser-b"), ("itk", "peruser-b"))


def site_config(root, port, accounts):
    """Two <Processor> blocks with a vhost each, and a third vhost by mpm-itk's AssignUserID;
    each site has the id CGI and a PHP page; 127.0.0.1 only."""
    text = f"""<Directory {root}>
    Require all granted
    Options +ExecCGI
    AddHandler cgi-script .cgi
</Directory>
<Processor alice>
    User peruser-a
    Group peruser-a
    MinProcessors 1
</Processor>
<Processor bob>
    User peruser-b
    Group peruser-b
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName alice.test
    DocumentRoot {root}/alice
    ServerEnvironment alice
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName bob.test
    DocumentRoot {root}/bob
    ServerEnvironment bob
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName itk.test
    DocumentRoot {root}/itk
    AssignUserID peruser-b peruser-b
</VirtualHost>
"""
    for name, account in SITES:
        ids = accounts[account]
        site = os.path.join(root, name)
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "id.cgi"), "w") as f:
            f.write("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"uid=$(id -u)\"\n")
        with open(os.path.join(site, "id.php"), "w") as f:
            f.write('<?php echo "uid=", posix_getuid(), " sapi=", PHP_SAPI, "\\n";\n')
        for path, mode in ((site, 0o755), (os.path.join(site, "id.cgi"), 0o755), (os.path.join(site, "id.php"), 0o644)):
            os.chown(path, *ids)
            os.chmod(path, mode)
    return text


def configure_instance(confdir, port, root, accounts):
    """Debian's own configuration, listening on 127.0.0.1:port only, with our site."""
    os.makedirs("/var/log/apache2" + confdir[len("/etc/apache2"):], exist_ok=True)
    with open(f"{confdir}/ports.conf", "w") as f:
        f.write(f"Listen 127.0.0.1:{port}\n")
    for p in glob.glob(f"{confdir}/sites-enabled/*"):
        os.unlink(p)
    with open(f"{confdir}/sites-available/peruser-test.conf", "w") as f:
        f.write(site_config(root, port, accounts))
    os.symlink("../sites-available/peruser-test.conf", f"{confdir}/sites-enabled/peruser-test.conf")


def get(port, host, path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, response.read().decode()


def start(confdir, port):
    """apache2ctl start (Debian's envvars) in a new session; returns the pid from the PidFile."""
    env = dict(ENV, APACHE_CONFDIR=confdir)
    suffix = "" if confdir == "/etc/apache2" else confdir[len("/etc/apache2"):]
    os.makedirs(f"/var/log/apache2{suffix}", exist_ok=True)
    pidfile = f"/var/run/apache2{suffix}/apache2.pid"
    run("setsid", "apache2ctl", "start", env=env)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            pid = int(open(pidfile).read())
            get(port, "alice.test", "/id.cgi")
            return pid
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"apache2 on {confdir} did not come up:\n" + error_log(confdir))


def error_log(confdir):
    suffix = "" if confdir == "/etc/apache2" else confdir[len("/etc/apache2"):]
    with open(f"/var/log/apache2{suffix}/error.log") as f:
        return "".join(line for line in f if "AH00558" not in line)[-3000:]


def uid_of(body):
    return int(re.search(r"uid=(\d+)", body).group(1))


@pytest.fixture(scope="module")
def package(accounts):
    """Builds the .deb, saves the machine's Apache configuration and state, installs the
    package; afterwards removes it and restores everything."""
    run("make", "-C", REPO, "deb")
    (deb,) = glob.glob(os.path.join(REPO, "build", "deb", f"{PACKAGE}_*.deb"))
    backup = tempfile.mkdtemp(prefix="peruser-deb-backup-")
    for name, path in (("etc", "/etc/apache2"), ("state", STATE)):
        with tarfile.open(os.path.join(backup, f"{name}.tar"), "w") as tar:
            if os.path.exists(path):
                tar.add(path)
    policy_before = open(POLICY).read() if os.path.exists(POLICY) else None
    with open(POLICY, "w") as f:
        f.write("#!/bin/sh\n# peruser test: no service starts by maintainer scripts\nexit 101\n")
    os.chmod(POLICY, 0o755)
    status = run("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False).stdout
    was_installed = status.startswith("install ok installed")
    if not was_installed and status:
        # Left as config-files by an earlier run: purge, or dpkg would treat the conffiles that
        # the restore of /etc/apache2 removed as deleted by the admin and not install them.
        run("dpkg", "--purge", PACKAGE, check=False)
    root = tempfile.mkdtemp(prefix="peruser-deb-sites-")
    os.chmod(root, 0o755)
    try:
        install = run("dpkg", "-i", deb)
        yield {"deb": deb, "root": root, "install_output": install.stdout + install.stderr}
    finally:
        if not was_installed:
            run("dpkg", "--purge", PACKAGE, check=False)
        for name, path in (("etc", "/etc/apache2"), ("state", STATE)):
            shutil.rmtree(path, ignore_errors=True)
            with tarfile.open(os.path.join(backup, f"{name}.tar")) as tar:
                tar.extractall("/")
        if policy_before is None:
            os.unlink(POLICY)
        else:
            with open(POLICY, "w") as f:
                f.write(policy_before)
        shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        for path in ("/etc/apache2-perusertest", "/var/log/apache2-perusertest", "/var/run/apache2-perusertest"):
            shutil.rmtree(path, ignore_errors=True)


def test_the_package_installs_the_module_and_its_snippets_without_switching_the_mpm(package):
    files = run("dpkg", "-L", PACKAGE).stdout.split()
    for path in ("/usr/lib/apache2/modules/mod_mpm_peruser.so", "/etc/apache2/mods-available/peruser.load",
                 "/etc/apache2/mods-available/peruser.conf"):
        assert path in files and os.path.exists(path)
    with open("/etc/apache2/mods-available/peruser.load") as f:
        assert f.readline().strip() == "# Conflicts: mpm_event mpm_worker mpm_prefork mpm_itk"
    assert "peruser" not in enabled_modules()
    assert "installed, not enabled" in package["install_output"]
    depends = run("dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
    assert re.search(r"apache2-api-\d{8}", depends), depends
    assert "swift" not in depends.lower()
    needed = run("readelf", "-d", "/usr/lib/apache2/modules/mod_mpm_peruser.so").stdout
    assert "swift" not in needed.lower(), needed


def test_a2enmod_peruser_in_a_copy_of_etc_apache2_serves_under_the_right_uids(package, accounts):
    confdir = "/etc/apache2-perusertest"
    shutil.rmtree(confdir, ignore_errors=True)
    shutil.copytree("/etc/apache2", confdir, symlinks=True)
    env = dict(ENV, APACHE_CONFDIR=confdir)
    # a2enmod refuses while another MPM is enabled (the Conflicts line), then works.
    refused = run("a2enmod", "peruser", env=env, check=False)
    assert refused.returncode != 0 and "cannot proceed due to conflicts" in refused.stdout + refused.stderr
    for mod in ("php8.2", "mpm_itk", "mpm_prefork", "mpm_event", "mpm_worker"):
        run("a2dismod", "-q", "-f", mod, env=env, check=False)
    run("a2enmod", "-q", "peruser", "cgi", env=env)
    assert {"peruser", "cgi"} <= enabled_modules(confdir)
    port = free_port()
    configure_instance(confdir, port, package["root"], accounts)
    assert run("apache2ctl", "configtest", env=env).returncode == 0
    pid = start(confdir, port)
    try:
        for name, account in SITES:
            try:
                status, body = get(port, f"{name}.test", "/id.cgi")
            except OSError as error:
                raise AssertionError(f"{name}.test: {error}\n" + error_log(confdir)) from error
            assert status == 200 and uid_of(body) == accounts[account][0], body
    finally:
        stop(pid)


def test_installing_mod_php_with_peruser_enabled_keeps_peruser_the_only_mpm(package, accounts):
    """The real /etc/apache2: peruser enabled, mod_php never enabled; then
    `apt-get install --reinstall libapache2-mod-php8.2` runs its postinst, which enables
    mpm_prefork beside peruser; the package's trigger puts peruser back alone."""
    for mod in ("php8.2", "mpm_itk", "mpm_prefork", "mpm_event", "mpm_worker"):
        run("a2dismod", "-q", "-f", mod, check=False)
        run("a2dismod", "-q", "--purge", mod, check=False)   # as if never enabled
    run("a2enmod", "-q", "peruser", "cgi")
    # a2query -M asks `apache2 -V` ("Server MPM: peruser"); mod_php's postinst knows only
    # prefork and itk, and switches anything else to prefork.
    assert run("a2query", "-M", check=False).stdout.strip() == "peruser"
    port = free_port()
    configure_instance("/etc/apache2", port, package["root"], accounts)
    run("apt-get", "update", "-qq")
    out = run("apt-get", "install", "--reinstall", "-y", "-o", "Dpkg::Options::=--force-confold",
              "libapache2-mod-php8.2")
    log = out.stdout + out.stderr
    assert "disabled mpm_prefork, which was enabled beside peruser" in log, log[-3000:]
    mods = enabled_modules()
    assert "peruser" in mods and "php8.2" in mods, mods
    assert not mods & {"mpm_prefork", "mpm_event", "mpm_worker", "mpm_itk"}, mods
    assert run("apache2ctl", "configtest").returncode == 0
    pid = start("/etc/apache2", port)
    try:
        status, body = get(port, "alice.test", "/id.php")
        assert status == 200 and uid_of(body) == accounts["peruser-a"][0] and "sapi=apache2handler" in body, body
        status, body = get(port, "bob.test", "/id.php")
        assert status == 200 and uid_of(body) == accounts["peruser-b"][0], body
    finally:
        stop(pid)


def test_a_second_mpm_is_named_with_its_fix_at_configtest(package):
    # What an admin sees if two MPMs get enabled some other way (here by hand).
    os.symlink("../mods-available/mpm_prefork.load", "/etc/apache2/mods-enabled/mpm_prefork.load")
    try:
        result = run("apache2ctl", "configtest", check=False)
        out = result.stdout + result.stderr
        assert result.returncode != 0
        assert "peruser: mpm_prefork is loaded too, and Apache loads one MPM. On Debian: rm " \
               "/etc/apache2/mods-enabled/mpm_prefork.load /etc/apache2/mods-enabled/mpm_prefork.conf" in out, out
    finally:
        os.unlink("/etc/apache2/mods-enabled/mpm_prefork.load")


def test_removing_the_package_with_peruser_disabled_leaves_a_working_apache(package, accounts):
    # The admin switches back first: another MPM, and no peruser directives in the sites.
    run("a2dismod", "-q", "peruser")
    run("a2enmod", "-q", "mpm_prefork")
    port = free_port()
    with open("/etc/apache2/ports.conf", "w") as f:
        f.write(f"Listen 127.0.0.1:{port}\n")
    os.unlink("/etc/apache2/sites-enabled/peruser-test.conf")
    with open("/etc/apache2/sites-enabled/plain.conf", "w") as f:
        f.write(f"<VirtualHost 127.0.0.1:{port}>\n ServerName alice.test\n DocumentRoot {package['root']}/alice\n"
                f"</VirtualHost>\n<Directory {package['root']}>\n Require all granted\n</Directory>\n")
    run("apt-get", "remove", "-y", PACKAGE)
    assert not os.path.exists("/usr/lib/apache2/modules/mod_mpm_peruser.so")
    assert run("apache2ctl", "configtest").returncode == 0
    run("setsid", "apache2ctl", "start")
    deadline = time.time() + 20
    while True:
        try:
            status, body = get(port, "alice.test", "/id.php")
            break
        except OSError:
            assert time.time() < deadline, "Apache did not start after the package was removed"
            time.sleep(0.2)
    stop(int(open("/var/run/apache2/apache2.pid").read()))
    assert status == 200 and "uid=33" in body, body   # prefork with mod_php: www-data


def test_removing_the_package_while_peruser_is_enabled_switches_apache_to_prefork(package):
    run("dpkg", "-i", package["deb"])
    run("a2dismod", "-q", "-f", "mpm_prefork", check=False)   # -f: php8.2, which depends on it, goes too
    run("a2enmod", "-q", "peruser")
    assert not enabled_modules() & {"mpm_prefork", "mpm_event", "mpm_worker"}
    out = run("apt-get", "remove", "-y", PACKAGE)
    assert "peruser was the enabled MPM; switched Apache to mpm_prefork" in out.stdout + out.stderr
    mods = enabled_modules()
    assert "mpm_prefork" in mods and "peruser" not in mods, mods
    assert run("apache2ctl", "configtest").returncode == 0, "Apache is left with a working MPM"
