"""Code that runs inside an instance, as a student's notebook cell would (through the echo app's shell,
ECHO_SHELL=1, `POST <prefix>run`), to see what it can learn about its neighbours."""

from __future__ import annotations

import base64
import json

# run inside the instance: everything a student's code learns about its neighbours, given their addresses
LOOK_AROUND = r"""
import json, os, random, socket, struct, sys

def nameserver():
    for line in open("/etc/resolv.conf"):
        if line.startswith("nameserver"):
            return line.split()[1]

def read_name(data, at):
    labels, jumped, end = [], False, at
    while True:
        n = data[at]
        if n >= 0xC0:
            if not jumped:
                end = at + 2
            at, jumped = ((n & 0x3F) << 8) | data[at + 1], True
            continue
        if n == 0:
            return ".".join(labels), (end if jumped else at + 1)
        labels.append(data[at + 1:at + 1 + n].decode("latin-1"))
        at += 1 + n

def ask(name, qtype):
    # one DNS query to the container's own resolver (Docker's embedded DNS): the answers' names or addresses
    qid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, (nameserver(), 53))
        data = s.recv(4096)
    count = struct.unpack(">H", data[6:8])[0]
    at = 12 + len(question) + 4
    found = []
    for _ in range(count):
        _, at = read_name(data, at)
        rtype, _, _, length = struct.unpack(">HHIH", data[at:at + 10])
        at += 10
        if rtype == 12:
            found.append(read_name(data, at)[0])
        elif rtype == 1:
            found.append(socket.inet_ntoa(data[at:at + 4]))
        at += length
    return found

seen = {"hostname": socket.gethostname(), "env": dict(os.environ), "files": {}, "reverse": {}, "libc": {},
        "forward": {}}
for path in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
    try:
        seen["files"][path] = open(path).read()
    except OSError as e:
        seen["files"][path] = f"error {e.errno}"
names = set()
for address in sys.argv[1:]:
    ptr = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    try:
        seen["reverse"][address] = ask(ptr, 12)
        names.update(seen["reverse"][address])
    except Exception as e:
        seen["reverse"][address] = f"error {e!r}"
    try:  # as a student's code would ask (libc)
        name, aliases, _ = socket.gethostbyaddr(address)
        seen["libc"][address] = [name, *aliases]
    except Exception as e:
        seen["libc"][address] = f"error {e!r}"
for name in sorted(names):  # each name the network gave, its service part, and its tasks.<service> form
    service = name.split(".")[0]
    for asked in (name, service, "tasks." + service):
        try:
            seen["forward"][asked] = ask(asked, 1)
        except Exception as e:
            seen["forward"][asked] = f"error {e!r}"
print(json.dumps(seen))
"""


def shell_command(script: str, *args: str) -> str:
    """A `sh -c` line that runs a Python script with arguments (no quoting trouble)."""
    encoded = base64.b64encode(script.encode()).decode()
    return ("python3 -c 'import base64,sys; exec(base64.b64decode(sys.argv[1]))' " + encoded + " "
            + " ".join(args))


def ids_in(seen: object, ids: set[str]) -> list[str]:
    """The log-safe prefixes of those `ids` that appear anywhere in what the inside saw."""
    text = json.dumps(seen)
    return sorted(i[:4] for i in ids if i in text)
