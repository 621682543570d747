"""The dashboard's web server: Starlette routes over a FleetWatch, served by uvicorn on
127.0.0.1 only (a controller in the cloud is reached through `ssh -L`).

Nothing of the fleet is served without the token printed in the URL: the page (a shell
with no data, and its scripts) takes it from its address into the tab's session storage
and sends it in a header with every request, its streams too (no cookie: a cookie for
127.0.0.1 goes to every port there); anything that changes the fleet (stop, a doctor
run) needs the header, which another site's page cannot send. Requests whose Host is not
this address are refused too (DNS rebinding)."""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from trainfleet.fleet.state import load_latest
from trainfleet.errors import TrainfleetError
from trainfleet.ui.views import fleet_view, job_row, timeline
from trainfleet.ui.watch import FleetWatch

HEADER = "x-trainfleet-token"
BATCH = 5000
"""Lines per server-sent event (a long job's history arrives in pieces the page can take)."""


OPEN_PATHS = ("/", "/static/")
"""The page's shell and its scripts: the same for everyone, holding nothing of the fleet."""


class TokenGate:
    """Every request names this server as its Host, and every one but the page's shell
    carries the token (header or query; the header only, for one that changes something),
    or gets 403."""

    def __init__(self, app: ASGIApp, token: str, hosts: set[str]) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    def _our_host(self, host: str) -> bool:
        """This server's own name, or a loopback name on any port: the guide's `ssh -L
        8000:127.0.0.1:PORT` tunnel arrives as `127.0.0.1:8000`. A DNS-rebinding page
        arrives under its own domain name, which is refused."""
        if host in self.hosts:
            return True
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        return name in ("127.0.0.1", "localhost", "[::1]") and (not port or port.isdigit())

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        changes = scope["method"] not in ("GET", "HEAD")
        path = scope.get("path", "")
        shell = not changes and (path == "/" or path.startswith(OPEN_PATHS[1]))
        allowed = self._our_host(headers.get("host", "")) and (
            shell or (self._matches(headers.get(HEADER)) if changes else
                      any(self._matches(v) for v in (headers.get(HEADER), *query.get("token", [])))))
        if not allowed:
            await PlainTextResponse("forbidden: open the URL `trainfleet ui` printed (it carries the token)\n",
                                    status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


STREAM_POLL = 0.25
"""Seconds a live stream waits for news before it looks whether the server is closing."""
KEEP_OPEN = 15.0


def make_app(watch: FleetWatch, token: str, hosts: set[str], closing: asyncio.Event | None = None) -> ASGIApp:
    """The routes; `closing` set (Ctrl-C) ends every live stream within STREAM_POLL seconds."""
    closing = closing or asyncio.Event()
    static = resources.files("trainfleet.ui") / "static"

    async def index(request: Request) -> Response:
        return HTMLResponse((static / "index.html").read_text(),
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                     "Content-Security-Policy": "default-src 'self'; "
                                     "style-src 'self' 'unsafe-inline'; img-src 'self' data:"})

    async def fleet(request: Request) -> Response:
        answers, failures, looked = watch.top
        return JSONResponse({**fleet_view(watch.fleet, answers, failures, looked, load_latest(watch.fleet, "doctor"),
                                          load_latest(watch.fleet, "netbench")),
                             "doctor_running": watch.doctor_running})

    async def jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [job_row(v) for v in await watch.jobs()]})

    async def job(request: Request) -> Response:
        view = await watch.job(request.path_params["job_id"])
        if view is None:
            return JSONResponse({"error": "no such job on this fleet's nodes"}, status_code=404)
        return JSONResponse({**job_row(view), "timeline": timeline(view)})

    async def stream(request: Request) -> Response:
        """The job's output and metrics as server-sent events, from the line and point the
        page already has (`lines`, `points`) on, live until the job ends."""
        view = await watch.job(request.path_params["job_id"])
        if view is None:
            return JSONResponse({"error": "no such job on this fleet's nodes"}, status_code=404)
        try:
            sent_lines = int(request.query_params.get("lines", 0))
            sent_points = int(request.query_params.get("points", 0))
        except ValueError:
            return JSONResponse({"error": "lines and points are counts (whole numbers)"}, status_code=400)
        followed = await watch.follow(view)

        async def events() -> Any:
            nonlocal sent_lines, sent_points
            while True:
                output = followed.output
                if sent_lines < output.line_count or sent_points < output.point_count:
                    lines, points, sent_lines, sent_points = output.after(sent_lines, sent_points, BATCH)
                    yield f"data: {json.dumps({'lines': lines, 'points': points})}\n\n"
                    continue
                if followed.done:
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                quiet = 0.0
                while not closing.is_set() and quiet < KEEP_OPEN and not await followed.wait(STREAM_POLL):
                    quiet += STREAM_POLL
                if closing.is_set():  # Ctrl-C on `trainfleet ui`: the page's streams close now
                    return
                if quiet >= KEEP_OPEN:
                    yield ": still here\n\n"  # a comment: proxies and `ssh -L` keep the stream open

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def stop(request: Request) -> Response:
        try:
            view = await watch.stop(request.path_params["job_id"])
        except TrainfleetError as exc:
            return JSONResponse({"error": exc.one_line()}, status_code=409)
        return JSONResponse(job_row(view))

    async def doctor(request: Request) -> Response:
        if not watch.doctor_running:
            asyncio.ensure_future(watch.doctor())
        return JSONResponse({"started": time.time()})

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/fleet", fleet),
        Route("/api/jobs", jobs),
        Route("/api/jobs/{job_id}", job),
        Route("/api/jobs/{job_id}/stream", stream),
        Route("/api/jobs/{job_id}/stop", stop, methods=["POST"]),
        Route("/api/doctor", doctor, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ])
    return TokenGate(app, token, hosts)


def bind(port: int) -> socket.socket:
    """127.0.0.1 only: the dashboard is for this machine (or an `ssh -L` to it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        from trainfleet.errors import UsageError

        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror})",
                         fix="pick another --port, or leave it out for a free one") from None
    return sock


async def serve(watch: FleetWatch, sock: socket.socket, token: str, ready: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM; `ready` gets the URL once the server accepts."""
    import uvicorn

    port = sock.getsockname()[1]
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    closing = asyncio.Event()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Ctrl-C is how a dashboard ends: shut down and return (uvicorn would raise the
            # signal again afterwards, ending the command as if interrupted mid-work). A page
            # left open holds its streams: they are closed, not waited for.
            closing.set()
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    # No access log: every URL carries the token.
    config = uvicorn.Config(make_app(watch, token, hosts, closing), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=1)
    server = Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        ready(f"http://127.0.0.1:{port}/?token={token}")

    announcing = asyncio.ensure_future(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcing.cancel()
