"""nginx front for per-instance origins: the rendered wildcard server block is valid nginx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.test_nginx import free_port, nginx_cmd, render, worker_user


def _self_signed(tmp_path: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={cn}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_instance_domain_renders_a_valid_wildcard_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "main", "example.org")
    wild_cert, wild_key = _self_signed(tmp_path, "wild", "*.apps.example.org")
    conf = render(
        tmp_path / "out", "--server-name", "example.org", "--listen", f"127.0.0.1:{free_port()}",
        "--listen-http", f"127.0.0.1:{free_port()}", "--gateway", "127.0.0.1:8000",
        "--cert", str(cert), "--key", str(key), "--instance-domain", "apps.example.org",
        "--instance-cert", str(wild_cert), "--instance-key", str(wild_key), *worker_user(),
    )
    result = subprocess.run(nginx_cmd(conf, "-t"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (conf.parent / "swarmpool.conf").read_text()
    assert "server_name *.apps.example.org;" in text
    assert f"ssl_certificate {wild_cert}" in text and f"ssl_certificate_key {wild_key}" in text


def test_instance_domain_over_plain_http_is_valid(tmp_path: Path) -> None:
    conf = render(tmp_path / "out", "--http-only", "--listen-http", f"127.0.0.1:{free_port()}",
                  "--gateway", "127.0.0.1:8000", "--instance-domain", "apps.localhost", *worker_user())
    result = subprocess.run(nginx_cmd(conf, "-t"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "server_name *.apps.localhost;" in (conf.parent / "swarmpool.conf").read_text()


def test_a_bad_instance_domain_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "nginx" / "render.py"),
                             "--http-only", "--gateway", "127.0.0.1:8000", "--out", str(tmp_path),
                             "--instance-domain", "Apps.Example.org:443"], capture_output=True, text=True)
    assert result.returncode == 2 and "--instance-domain" in result.stderr
