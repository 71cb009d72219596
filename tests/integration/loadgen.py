"""A bounded load generator for loopback tests: N requests from C concurrent clients."""
import http.client
import threading


def run_load(port, total, concurrency, host, path="/index.html", expect=None, timeout=20, on_progress=None):
    """Sends `total` GET requests (a new connection each, Connection: close) from `concurrency`
    threads. Returns (ok, failures) where failures lists (index, reason)."""
    lock = threading.Lock()
    counter = {"next": 0, "ok": 0}
    failures = []

    def client():
        while True:
            with lock:
                index = counter["next"]
                if index >= total:
                    return
                counter["next"] += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("GET", path, headers={"Host": host, "Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status != 200 or (expect is not None and body != expect):
                    raise RuntimeError(f"status {resp.status} body {body[:80]!r}")
                with lock:
                    counter["ok"] += 1
            except Exception as exc:  # every failure is reported, none is retried
                with lock:
                    failures.append((index, repr(exc)))
            if on_progress:
                on_progress(index)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counter["ok"], failures
