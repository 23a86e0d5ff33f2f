"""Render a complete, self-contained nginx.conf for swarmpool's front (stdlib only).

    python nginx/render.py --server-name example.org --listen 443 --gateway 127.0.0.1:8000 \\
        --cert /etc/ssl/example.org.pem --key /etc/ssl/example.org.key --out /srv/swarmpool-nginx
    python nginx/render.py --http-only --listen-http 127.0.0.1:8080 --gateway 127.0.0.1:8000 --out /tmp/sp-nginx

Then: nginx -c OUT/nginx.conf -p OUT/ -e OUT/logs/error.log   (pid, logs and temp files stay under OUT).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TLS_TEMPLATE = HERE / "swarmpool.conf.template"
HTTP_TEMPLATE = HERE / "swarmpool-http.conf.template"
LOCATIONS = HERE / "swarmpool-locations.conf"
LOGGING = HERE / "swarmpool-logging.conf"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

MAIN = """\
# Rendered by nginx/render.py; run with: nginx -c {out}/nginx.conf -p {out}/ -e {out}/logs/error.log
{user}worker_processes {workers};
pid {out}/nginx.pid;
error_log {out}/logs/error.log {log_level};

events {{
    worker_connections {worker_connections};
}}

http {{
    default_type application/octet-stream;
    include {out}/swarmpool-logging.conf;
    access_log {access_log};
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    server_tokens off;
    client_body_temp_path {out}/tmp/client_body;
    proxy_temp_path {out}/tmp/proxy;
    fastcgi_temp_path {out}/tmp/fastcgi;
    uwsgi_temp_path {out}/tmp/uwsgi;
    scgi_temp_path {out}/tmp/scgi;

    include {out}/swarmpool.conf;
}}
"""

# Per-instance origins (--instance-domain): `<label>.<domain>` for every instance, with a wildcard
# certificate. The same locations; the gateway serves only `/i/<id>/` of the label's own instance there.
INSTANCE_SERVER_TLS = """
server {{
    listen {listen} ssl http2;
    server_name *.{domain};

    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:swarmpool_ssl:10m;
    ssl_session_timeout 1d;

    include {locations};
}}
"""
INSTANCE_SERVER_HTTP = """
server {{
    listen {listen};
    server_name *.{domain};

    include {locations};
}}
"""

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace {name} for known names only: nginx's own braces and $variables stay as they are."""

    def replace(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(0))

    text = _PLACEHOLDER.sub(replace, template)
    if leftover := [name for name in _PLACEHOLDER.findall(text) if name not in values and name.islower()]:
        # a braces pair like "{ default upgrade; }" never matches [a-z_]+ alone, so this is a typo
        raise ValueError(f"unfilled placeholders: {sorted(set(leftover))}")
    return text


def port_of(listen: str) -> int:
    """The port of an nginx `listen` value: "443", "0.0.0.0:443", "[::]:443"."""
    return int(listen.rsplit(":", 1)[-1].split()[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-name", default="_", help="server_name (default: _ = any)")
    parser.add_argument("--listen", default="443", help="HTTPS listen address, e.g. 443 or 0.0.0.0:443")
    parser.add_argument("--listen-http", default=None, help="plain HTTP listen address (default 80)")
    parser.add_argument("--gateway", required=True, help="the swarmpool gateway, host:port")
    parser.add_argument("--cert", help="TLS certificate chain (PEM)")
    parser.add_argument("--key", help="TLS private key (PEM)")
    parser.add_argument("--http-only", action="store_true", help="no TLS: one plain HTTP server (tests, loopback)")
    parser.add_argument("--acme-root", default="/var/www/acme", help="webroot for ACME HTTP-01 challenges")
    parser.add_argument("--launch-rate", default="10r/s", help="sustained /launch/ rate per client address")
    parser.add_argument("--launch-burst", type=int, default=200,
                        help="extra /launch/ requests per address served at once (a classroom behind one NAT)")
    parser.add_argument("--metrics-allow", action="append", default=None,
                        help="address/CIDR allowed to GET /metrics (repeatable; default 127.0.0.1 and ::1)")
    parser.add_argument("--instance-domain", default=None,
                        help="one origin per instance: <label>.DOMAIN (wildcard DNS to this host; the catalogue's "
                             "settings.instance_domain must name the same domain, with its port if not 443)")
    parser.add_argument("--instance-cert", help="wildcard certificate for *.DOMAIN (default: --cert)")
    parser.add_argument("--instance-key", help="its private key (default: --key)")
    parser.add_argument("--user", default=None, help="worker user (only when the master runs as root)")
    parser.add_argument("--workers", default="auto", help="worker_processes")
    parser.add_argument("--worker-connections", type=int, default=4096)
    parser.add_argument("--access-log", default=None, help="access log path, or 'off' (default OUT/logs/access.log)")
    parser.add_argument("--log-level", default="warn", help="error_log level")
    parser.add_argument("--out", required=True, type=Path, help="directory for nginx.conf, pid, logs, temp files")
    args = parser.parse_args(argv)
    if args.listen_http is None:
        args.listen_http = "8080" if args.http_only else "80"
    if not args.http_only and not (args.cert and args.key):
        parser.error("--cert and --key are required unless --http-only")
    if args.instance_domain is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?",
                                                             args.instance_domain):
        parser.error("--instance-domain is a lowercase domain name without port, e.g. apps.example.org")
    if not re.fullmatch(r"\d+r/[sm]", args.launch_rate) or int(args.launch_rate.split("r")[0]) < 1:
        parser.error("--launch-rate looks like 10r/s or 300r/m, at least 1")
    if args.launch_burst < 1:
        parser.error(f"--launch-burst must be at least 1, got {args.launch_burst}")
    if args.worker_connections < 16:
        parser.error(f"--worker-connections must be at least 16, got {args.worker_connections}")
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        parser.error(f"--workers is 'auto' or a number of at least 1, got {args.workers!r}")
    if args.log_level not in ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"):
        parser.error(f"--log-level is one of nginx's levels (debug ... emerg), got {args.log_level!r}")
    for option, value in (("--gateway", args.gateway), ("--listen", args.listen), ("--listen-http", args.listen_http)):
        port = value.rsplit(":", 1)[-1].split()[0]
        if not (port.isdigit() and 1 <= int(port) <= 65535) or (option == "--gateway" and ":" not in value):
            parser.error(f"{option} needs {'host:' if option == '--gateway' else ''}port with a port in 1..65535, "
                         f"got {value!r}")
    for allowed in args.metrics_allow or ():
        try:
            ipaddress.ip_network(allowed, strict=False)
        except ValueError:
            parser.error(f"--metrics-allow takes an address or CIDR, got {allowed!r}")
    return args


def render(args: argparse.Namespace) -> Path:
    """Write OUT/nginx.conf and the files it includes (swarmpool.conf, -locations, -logging); return nginx.conf."""
    out: Path = args.out.resolve()
    for sub in ("logs", *(f"tmp/{name}" for name in TEMP_DIRS)):
        (out / sub).mkdir(parents=True, exist_ok=True)

    https_port = port_of(args.listen)
    allow = args.metrics_allow or ["127.0.0.1", "::1"]
    values = {
        "server_name": args.server_name,
        "listen": args.listen,
        "listen_http": args.listen_http,
        "https_port_suffix": "" if https_port == 443 else f":{https_port}",
        "gateway": args.gateway,
        "cert": str(Path(args.cert).resolve()) if args.cert else "",
        "key": str(Path(args.key).resolve()) if args.key else "",
        "acme_root": args.acme_root,
        "launch_rate": args.launch_rate,
        "launch_burst": str(args.launch_burst),
        "metrics_allow": "\n".join(f"    allow {address};" for address in allow),
        "locations": str(out / "swarmpool-locations.conf"),
    }
    template = HTTP_TEMPLATE if args.http_only else TLS_TEMPLATE
    (out / "swarmpool-locations.conf").write_text(fill(LOCATIONS.read_text(), values))
    (out / "swarmpool-logging.conf").write_text(fill(LOGGING.read_text(), values))
    conf = fill(template.read_text(), values)
    if args.instance_domain:
        instance_server = INSTANCE_SERVER_HTTP if args.http_only else INSTANCE_SERVER_TLS
        conf += instance_server.format(
            listen=args.listen_http if args.http_only else args.listen, domain=args.instance_domain,
            cert=str(Path(args.instance_cert or args.cert).resolve()) if not args.http_only else "",
            key=str(Path(args.instance_key or args.key).resolve()) if not args.http_only else "",
            locations=values["locations"])
    (out / "swarmpool.conf").write_text(conf)
    main = MAIN.format(
        out=out,
        user=f"user {args.user};\n" if args.user else "",
        workers=args.workers,
        worker_connections=args.worker_connections,
        access_log="off" if args.access_log == "off" else f"{args.access_log or out / 'logs' / 'access.log'} swarmpool",
        log_level=args.log_level,
    )
    (out / "nginx.conf").write_text(main)
    return out / "nginx.conf"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = render(args)
    out = path.parent
    print(f"wrote {path}")
    print(f"check: nginx -t -c {path} -p {out}/ -e {out}/logs/error.log")
    print(f"run:   nginx -c {path} -p {out}/ -e {out}/logs/error.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
