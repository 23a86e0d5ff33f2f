"""`swarmpool dashboard`: the operators' dashboard as its own command (a deployed stack has no `up` to serve
it), against a real `swarmpool up` whose state dir holds the operator's credentials: it prints a one-time
login URL, the link logs in once, and the page shows the pools."""

from __future__ import annotations

import asyncio
import re
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from swarmpool.natsd import free_port
from tests.stack import cli_process, echo_catalogue, wait_for

pytestmark = pytest.mark.docker


async def test_dashboard_command_prints_a_login_url_that_logs_in_once(tmp_path: Path, namespace: str,
                                                                       echo_image: str) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=1, max_=2))
    state = tmp_path / "state"
    port, ops = free_port(), free_port()
    async with AsyncExitStack() as stack:
        up, up_lines = await cli_process(stack, "up", "--catalogue", str(catalogue), "--port", str(port),
                                         "--dashboard-port", "0", "--state-dir", str(state), "--namespace", namespace)
        await wait_for(lambda: any("swarmpool is up" in line for line in up_lines) or up.returncode is not None,
                       timeout=60, what="swarmpool up")
        assert up.returncode is None, "".join(up_lines)
        assert not any("dashboard:" in line for line in up_lines)  # up serves none here: the command does

        dash, lines = await cli_process(stack, "dashboard", "--state-dir", str(state), "--namespace", namespace,
                                        "--port", str(ops))
        pattern = re.compile(rf"(http://127\.0\.0\.1:{ops}/login\?token=\S+)")
        await wait_for(lambda: any(pattern.search(line) for line in lines) or dash.returncode is not None,
                       timeout=20, what="the dashboard's login URL")
        assert dash.returncode is None, "".join(lines)
        (login,) = [m.group(1) for line in lines if (m := pattern.search(line))]

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: an IP host
            async with http.get(f"http://127.0.0.1:{ops}/") as r:
                assert r.status == 401  # no session, no page
            async with http.get(login) as r:  # 303 to the page, with the session cookie
                assert r.status == 200 and str(r.url) == f"http://127.0.0.1:{ops}/"
                body = await r.text()
            assert [c.key for c in http.cookie_jar] == ["sp_ops_session"]
            assert f"swarmpool · {namespace}" in body
            assert 'tr class="pool" data-app="echo"' in body  # the pool, from the admin service of `up`
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(login, allow_redirects=False) as r:
                assert r.status == 403  # the link worked once

    # a state dir without operator credentials: a clear error, no traceback
    bad = await asyncio.create_subprocess_exec(sys.executable, "-m", "swarmpool.cli", "dashboard", "--state-dir",
                                               str(tmp_path / "empty"), "--port", str(free_port()),
                                               stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode == 1 and b"no operator credentials" in err and b"Traceback" not in err
