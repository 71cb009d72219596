"""Slow clients against one tenant, kept up for a bounded time (issue 18's attacker).

    python3 slow_attack.py --plain-port P --tls-port T --host a.test --each 200 --seconds 30 \
        --sources 127.0.0.1 [--sources ...] [--forwarded-for 198.51.100.1]

Keeps `--each` connections of every kind open to `--host` on loopback, opening a new one
whenever the server closes one, and trickles one byte per second on each:
  keepalive  one request served, then the next head trickled (plain HTTP);
  tls_head   TLS handshake completed, then the request head trickled;
  tls_hello  a complete ClientHello, then nothing;
  post       a request head with Content-Length: 1000000, then the body trickled.
Connections are spread over `--sources` (local addresses, round robin). Prints one JSON line
with counts on exit. Loopback only: every address is 127.x.
"""
import argparse
import asyncio
import json
import resource
import ssl
import sys
import time

KINDS = ("keepalive", "tls_head", "tls_hello", "post")


def client_hello(host):
    """The bytes of a real ClientHello for `host`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Attack:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.seconds
        self.opened = {kind: 0 for kind in KINDS}
        self.closed_by_server = {kind: 0 for kind in KINDS}
        self.failed = {kind: 0 for kind in KINDS}
        self.next_source = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.hello = client_hello(args.host)
        self.extra = (f"X-Forwarded-For: {args.forwarded_for}\r\n" if args.forwarded_for else "")

    def source(self):
        source = self.args.sources[self.next_source % len(self.args.sources)]
        self.next_source += 1
        return (source, 0)

    def left(self):
        return self.deadline - time.monotonic()

    async def trickle(self, reader, writer, byte):
        """One byte a second until the server closes or time is up."""
        while self.left() > 0:
            writer.write(byte)
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=min(1.0, max(0.01, self.left())))
                if not data:
                    return True  # closed by the server
            except asyncio.TimeoutError:
                pass
        return False

    async def one(self, kind):
        host, a = self.args.host, self.args
        if kind in ("tls_head",):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", a.tls_port, ssl=self.context, server_hostname=host, local_addr=self.source(),
                ssl_handshake_timeout=10)
        else:
            port = a.tls_port if kind == "tls_hello" else a.plain_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=self.source())
        self.opened[kind] += 1
        try:
            if kind == "keepalive":
                writer.write(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n{self.extra}\r\n".encode())
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await asyncio.wait_for(reader.readexactly(length), timeout=15)
                writer.write(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n{self.extra}X-Slow: ".encode())
                closed = await self.trickle(reader, writer, b"s")
            elif kind == "tls_head":
                writer.write(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n{self.extra}X-Slow: ".encode())
                closed = await self.trickle(reader, writer, b"s")
            elif kind == "tls_hello":
                writer.write(self.hello)
                await writer.drain()
                closed = False
                while self.left() > 0:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), timeout=min(1.0, max(0.01, self.left())))
                        if not data:
                            closed = True
                            break
                    except asyncio.TimeoutError:
                        pass
            else:
                writer.write(f"POST /cgi-bin/id.cgi HTTP/1.1\r\nHost: {host}\r\n{self.extra}"
                             "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode())
                closed = await self.trickle(reader, writer, b"x")
            if closed:
                self.closed_by_server[kind] += 1
        finally:
            writer.close()

    async def keep(self, kind):
        while self.left() > 0:
            try:
                await self.one(kind)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
                self.failed[kind] += 1
                await asyncio.sleep(0.05)

    async def run(self):
        tasks = [asyncio.create_task(self.keep(kind)) for kind in self.args.kinds for _ in range(self.args.each)]
        await asyncio.gather(*tasks, return_exceptions=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plain-port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--each", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--sources", action="append", required=True)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--forwarded-for")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    assert all(k in KINDS for k in args.kinds), args.kinds
    assert all(s.startswith("127.") for s in args.sources), "loopback only"
    assert args.seconds <= 120 and args.each <= 500, "bounded"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    attack = Attack(args)
    asyncio.run(attack.run())
    print(json.dumps({"opened": attack.opened, "closed_by_server": attack.closed_by_server,
                      "failed": attack.failed}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
