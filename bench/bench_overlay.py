"""What `--encrypt-overlays` costs (and whether it works) on the 2-node test swarm (tests/cluster.py): TCP round
trips and a bulk transfer between a task on the manager and one on the worker, over a plain overlay and over an
encrypted one (IPsec ESP between the nodes). Prints the round trips' table (median, p99, ratio to the plain
overlay) and the bulk rate; an overlay whose client cannot reach its server is reported as failing.

Run as root: python -m bench.bench_overlay   (traffic stays between the test swarm's namespaces on this host)
"""

from __future__ import annotations

import json
import time

from bench.support import print_rows
from tests.cluster import Cluster, two_node_swarm

ECHO = "swarmpool/echo:latest"
TRIPS = 2000
BULK = 32 * 1024 * 1024
SERVER = """
import socket, threading
def serve(c):
    with c:
        while data := c.recv(65536):
            if data[:1] == b"r":
                c.sendall(data)
s = socket.create_server(("0.0.0.0", 9000))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
CLIENT = """
import json, socket, sys, time
deadline = time.monotonic() + 60
while True:
    try:
        c = socket.create_connection((sys.argv[1], 9000), timeout=3)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            print(json.dumps({"error": str(e)}), flush=True)
            time.sleep(3600)
        time.sleep(0.5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
trips = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    c.sendall(b"r" * 64)
    got = 0
    while got < 64:
        got += len(c.recv(64 - got))
    trips.append((time.perf_counter() - t) * 1000)
chunk, left, t = b"b" * 65536, int(sys.argv[3]), time.perf_counter()
while left > 0:
    c.sendall(chunk)
    left -= len(chunk)
c.shutdown(socket.SHUT_WR)
c.recv(1)
seconds = time.perf_counter() - t
print(json.dumps({"trips": trips, "mib_s": int(sys.argv[3]) / 1048576 / seconds}), flush=True)
time.sleep(3600)
"""


def measure(cluster: Cluster, kind: str) -> dict[str, object]:
    """One overlay (plain or encrypted): a server on the worker, a client on the manager; the client's result."""
    m = cluster.manager
    network = f"spbench-{kind}"
    m.docker("network", "create", "-d", "overlay", *(["--opt", "encrypted"] if kind == "encrypted" else []), network)
    common = ["--detach", "--network", network, "--restart-condition", "none", "--endpoint-mode", "dnsrr",
              "--entrypoint", "python3"]
    m.docker("service", "create", *common, "--name", f"srv-{kind}", "--constraint", "node.hostname==spc-w",
             ECHO, "-c", SERVER)
    m.docker("service", "create", *common, "--name", f"cli-{kind}", "--constraint", "node.hostname==spc-m",
             ECHO, "-c", CLIENT, f"srv-{kind}", str(TRIPS), str(BULK))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            logs = m.docker("service", "logs", "--raw", f"cli-{kind}", check=False).stdout.decode()
            lines = [line for line in logs.splitlines() if line.startswith("{")]
            if lines:
                return json.loads(lines[-1])  # type: ignore[no-any-return]
            time.sleep(1)
        return {"error": "no result within 180 s"}
    finally:
        m.docker("service", "rm", f"srv-{kind}", f"cli-{kind}", check=False)
        deadline = time.monotonic() + 60
        while m.docker("network", "rm", network, check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)


def main() -> None:
    with two_node_swarm([ECHO], [ECHO]) as cluster:
        results = {kind: measure(cluster, kind) for kind in ("plain", "encrypted")}
    rows = [(f"{kind} round trip", result["trips"]) for kind, result in results.items() if "trips" in result]
    if rows:
        print_rows(rows, decimals=2)  # type: ignore[arg-type]
    for kind, result in results.items():
        if "error" in result:
            print(f"{kind}: FAILS: {result['error']}")
        else:
            print(f"{kind}: bulk {result['mib_s']:.0f} MiB/s")


if __name__ == "__main__":
    main()
