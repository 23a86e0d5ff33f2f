"""A tiny test app for swarmpool: echoes requests, WebSocket messages and bodies under its URL prefix."""

import asyncio
import os
import socket
import subprocess

from aiohttp import WSMsgType, web

PREFIX = "/" + os.environ.get("SWARMPOOL_PREFIX", "/").strip("/") + "/"
PREFIX = "/" if PREFIX == "//" else PREFIX
ID = os.environ.get("SWARMPOOL_ID", "")
# ECHO_SHELL=1: POST <prefix>run runs its body with `sh -c` inside the instance and answers its output,
# as a notebook cell would. Only for tests that act as a student running code; never in a demo catalogue.
SHELL = os.environ.get("ECHO_SHELL") == "1"


def route(request: web.Request) -> str:
    """The path relative to the prefix; anything outside it is not ours (404, and the id stays unsaid)."""
    path = request.path
    if not path.startswith(PREFIX):
        raise web.HTTPNotFound()
    return path[len(PREFIX):]


async def handle_get(request: web.Request) -> web.StreamResponse:
    tail = route(request)
    if tail == "healthz":
        return web.Response(text="ok")
    if tail == "ws":
        return await websocket(request)
    if tail == "big":
        return await big(request)
    if tail == "page":  # an HTML page: a student's page load, as the gateway sees it
        return web.Response(text="<!doctype html><title>echo</title><p>echo</p>", content_type="text/html")
    return web.json_response(
        {"id": ID, "hostname": socket.gethostname(), "path": request.path, "headers": dict(request.headers)}
    )


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def big(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "1048576"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Content-Length": str(n)})
    await response.prepare(request)
    chunk = b"x" * 65536
    while n > 0:
        await response.write(chunk[: min(n, len(chunk))])
        n -= len(chunk)
    await response.write_eof()
    return response


async def handle_post(request: web.Request) -> web.Response:
    tail = route(request)
    if tail == "run" and SHELL:
        return await run(request)
    if tail != "echo":
        raise web.HTTPNotFound()
    return web.Response(body=await request.read(), content_type=request.content_type)


async def run(request: web.Request) -> web.Response:
    """A shell command from the body, run in the instance (as a student's notebook cell would): rc and output."""
    command = (await request.read()).decode()
    timeout = float(request.query.get("timeout", "20"))
    try:
        done = await asyncio.to_thread(
            subprocess.run, ["sh", "-c", command], capture_output=True, text=True, timeout=timeout
        )
        result = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    except subprocess.TimeoutExpired as e:
        result = {"rc": -1, "stdout": str(e.stdout or ""), "stderr": "timeout"}
    return web.json_response(result)


async def main() -> None:
    await asyncio.sleep(float(os.environ.get("ECHO_START_DELAY", "0")))
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle_get)
    app.router.add_post("/{tail:.*}", handle_post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", int(os.environ.get("PORT", "8888"))).start()
    print(os.environ.get("ECHO_READY_MARKER", "echo ready"), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
