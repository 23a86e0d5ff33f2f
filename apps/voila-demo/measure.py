"""Time the voila-demo image: container start -> probe passes -> first rendered page, with and without preheat.

    python apps/voila-demo/measure.py [--runs 3] [--image swarmpool/voila-demo:latest]

Stdlib only. Talks to the container through a host port on 127.0.0.1 only; removes its containers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import urllib.error
import urllib.request

PREFIX = "/i/measure/"
MARKER = "swarmpool: voila-demo notebook executed"
PROBE = "voila/static/favicon.ico"
PORT = 18899


def voila_command(preheat: bool) -> list[str]:
    command = [
        "voila", "app.ipynb", "--port=8866", "--no-browser", "--Voila.ip=0.0.0.0",
        f"--Voila.base_url={PREFIX}", "--Voila.tornado_settings=allow_origin=*",
    ]
    if preheat:
        command += ["--preheat_kernel=True", "--pool_size=1"]
    return command


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def one_run(image: str, preheat: bool) -> dict[str, float]:
    base = f"http://127.0.0.1:{PORT}{PREFIX}"
    started = time.monotonic()
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{PORT}:8866", image, *voila_command(preheat)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    try:
        times: dict[str, float] = {}
        deadline = started + 120
        while time.monotonic() < deadline and len(times) < 2:
            now = time.monotonic() - started
            if "http" not in times and http_status(base + PROBE) == 200:
                times["http"] = now
            if "marker" not in times:
                logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
                if MARKER in logs.stdout + logs.stderr:
                    times["marker"] = now
            if not preheat and "http" in times:
                break  # without preheat nothing runs before the first page: no marker yet
            time.sleep(0.05)
        ready = max(times.values())
        page_started = time.monotonic()
        with urllib.request.urlopen(base, timeout=60) as response:
            body = response.read().decode()
        times["page"] = time.monotonic() - page_started
        times["ready"] = ready
        # The widget view is in the HTML only once the notebook has executed (before or while rendering).
        times["output_in_page"] = float("application/vnd.jupyter.widget-view+json" in body)
        return times
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="swarmpool/voila-demo:latest")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for preheat in (True, False):
        runs = [one_run(args.image, preheat) for _ in range(args.runs)]
        for key in ("http", "marker", "ready", "page", "output_in_page"):
            values = [run[key] for run in runs if key in run]
            if values:
                print(f"preheat={preheat!s:5} {key:15} median {statistics.median(values):6.2f}  "
                      f"all {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
