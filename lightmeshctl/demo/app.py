"""A demo service: answers with who served it, after calling the next service through its sidecar.

The app knows nothing of the mesh except its sidecar's outbound address, which it uses as an HTTP
proxy (`http://catalog/` goes to the sidecar, which routes by host) — what iptables interception
will make transparent in cluster mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

# What an instrumented app forwards from the request it serves to the calls it makes, so the
# sidecars can join the hops into one trace: the request id, W3C trace context and B3 (multi- and
# single-header), plus the header the demo routes on.
PROPAGATED = (
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)


def build_app(
    *,
    name: str,
    version: str,
    workload: str,
    call: str,
    outbound: str,
    fail_first: int = 0,
    delay: float = 0.0,
    record: str = "",
) -> web.Application:
    """The demo service's web application.

    `fail_first`: answer 503 to the first N requests (a flaky instance, for outlier detection);
    `delay`: wait this many seconds before answering (a slow instance, for circuit breaking);
    `record`: append "METHOD x-request-id" to this file for every request, as it arrives (one
    write each, so a SIGKILL loses none: what the chaos suite counts re-sent requests with).
    Per request, `?delay=S` waits S seconds more and `?bytes=N` answers N bytes of body, streamed
    (a large download for slow readers).
    """
    session: dict[str, ClientSession] = {}
    served = [0]
    record_fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if record else -1

    async def handle(request: web.Request) -> web.StreamResponse:
        if record_fd >= 0:
            seen = f"{request.method} {request.headers.get('x-request-id', '-')}\n"
            os.write(record_fd, seen.encode("latin-1", "replace"))
        extra_delay = float(request.query.get("delay", "0") or 0)
        if extra_delay:
            await asyncio.sleep(extra_delay)
        if "bytes" in request.query:
            return await _download(request, int(request.query["bytes"]))
        body: dict[str, Any] = {
            "service": name,
            "version": version,
            "workload": workload,
            "path": request.path_qs,
            # Repeated headers joined with ", " so tests can see every value.
            "headers": {k.lower(): ", ".join(request.headers.getall(k)) for k in request.headers},
        }
        served[0] += 1
        if delay:
            await asyncio.sleep(delay)
        if served[0] <= fail_first:
            return web.json_response({**body, "failed": served[0]}, status=503)
        if call:
            headers = {h: request.headers[h] for h in PROPAGATED if h in request.headers}
            try:
                async with session["client"].get(
                    f"http://{call}{request.path_qs}", proxy=f"http://{outbound}", headers=headers
                ) as response:
                    text = await response.text()
                    try:
                        body["upstream"] = json.loads(text)
                    except ValueError:
                        body["upstream"] = {"error": text.strip()}
                    body["upstream_status"] = response.status
                    if response.status >= 500:
                        return web.json_response(body, status=502)
            except (ClientError, TimeoutError) as error:
                body["upstream"] = {"error": f"{type(error).__name__}: {error}"}
                return web.json_response(body, status=502)
        return web.json_response(body)

    async def start(_: web.Application) -> None:
        session["client"] = ClientSession(timeout=ClientTimeout(total=10))

    async def stop(_: web.Application) -> None:
        await session["client"].close()

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _download(request: web.Request, size: int) -> web.StreamResponse:
    """`size` bytes of body in 256 KiB writes, each awaited (the client's pace sets ours)."""
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    block = b"x" * (256 * 1024)
    for offset in range(0, size, len(block)):
        await response.write(block[: size - offset])
    await response.write_eof()
    return response


def main() -> None:
    """`python -m lightmeshctl.demo.app --name catalog --version v1 --port 9001 ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--workload", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--call", default="", help="service to call for every request")
    parser.add_argument("--outbound", default="", help="host:port of this app's sidecar outbound")
    parser.add_argument("--fail-first", type=int, default=0, help="answer 503 to the first N")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--record", default="", help="append each request's method and id here")
    args = parser.parse_args()
    app = build_app(
        name=args.name,
        version=args.version,
        workload=args.workload or f"{args.name}-{args.version}",
        call=args.call,
        outbound=args.outbound,
        fail_first=args.fail_first,
        delay=args.delay,
        record=args.record,
    )
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=2,
    )


if __name__ == "__main__":
    main()
