#!/bin/sh
# Starts a demo Apache on 127.0.0.1:8080 with this MPM: two server environments, each under
# its own demo user, serving alice.localhost and bob.localhost. Stop it with `make demo-stop`.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
root=${PERUSER_DEMO_ROOT:-/tmp/peruser-demo}
port=${PERUSER_DEMO_PORT:-8080}

for u in peruser-demo-alice peruser-demo-bob; do
    getent group "$u" >/dev/null || groupadd --system "$u"
    getent passwd "$u" >/dev/null || useradd --system --gid "$u" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
done

if [ -f "$root/run/httpd.pid" ] && kill -0 "$(cat "$root/run/httpd.pid")" 2>/dev/null; then
    echo "demo: already running (pid $(cat "$root/run/httpd.pid")); make demo-stop first" >&2
    exit 1
fi
rm -rf "$root"
mkdir -p "$root/conf" "$root/logs" "$root/run"
chmod 755 "$root"
for name in alice bob; do
    site="$root/$name"
    mkdir -p "$site/cgi-bin"
    echo "<h1>$name's site</h1>" > "$site/index.html"
    cat > "$site/cgi-bin/whoami.cgi" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "served for $SERVER_NAME by uid=$(id -u) ($(id -un)) gid=$(id -g) ($(id -gn))"
CGI
    chmod 755 "$site/cgi-bin/whoami.cgi"
    chown -R "peruser-demo-$name:peruser-demo-$name" "$site"
done

m=/usr/lib/apache2/modules
cat > "$root/conf/httpd.conf" <<CONF
ServerRoot $root
PidFile $root/run/httpd.pid
ErrorLog $root/logs/error.log
DefaultRuntimeDir $root/run
ServerName localhost
LoadModule mpm_peruser_module $here/build/mod_mpm_peruser.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule mime_module $m/mod_mime.so
LoadModule alias_module $m/mod_alias.so
LoadModule cgi_module $m/mod_cgi.so
LoadModule dir_module $m/mod_dir.so
TypesConfig /etc/mime.types
LogFormat "%v %a %>s \"%r\"" vhost
CustomLog $root/logs/access.log vhost
Listen 127.0.0.1:$port
User www-data
Group www-data
MinMultiplexers 2
MinProcessors 1
MinSpareProcessors 1

<Directory $root>
    Require all granted
</Directory>

<Processor alice>
    User peruser-demo-alice
    Group peruser-demo-alice
</Processor>
<Processor bob>
    User peruser-demo-bob
    Group peruser-demo-bob
</Processor>

<VirtualHost 127.0.0.1:$port>
    ServerName alice.localhost
    DocumentRoot $root/alice
    ScriptAlias /cgi-bin/ $root/alice/cgi-bin/
    ServerEnvironment alice
</VirtualHost>
<VirtualHost 127.0.0.1:$port>
    ServerName bob.localhost
    DocumentRoot $root/bob
    ScriptAlias /cgi-bin/ $root/bob/cgi-bin/
    ServerEnvironment bob
</VirtualHost>
CONF

apache2 -t -f "$root/conf/httpd.conf"
setsid apache2 -f "$root/conf/httpd.conf" -k start
sleep 1
echo
echo "demo: running on 127.0.0.1:$port (pid $(cat "$root/run/httpd.pid")); try:"
echo "  curl -H 'Host: alice.localhost' http://127.0.0.1:$port/cgi-bin/whoami.cgi"
echo "  curl -H 'Host: bob.localhost'   http://127.0.0.1:$port/cgi-bin/whoami.cgi"
echo "  ps -o pid,user,group,cmd --sid $(ps -o sid= -p "$(cat "$root/run/httpd.pid")" | tr -d ' ')"
echo "logs in $root/logs; stop it with: make demo-stop"
