"""A server at a URL the operator did not configure: it records whatever reaches it (tests of outbound URLs)."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

BANNER = "metadata-service-banner-7f3a"


class Target:
    """`async with Target() as target:` serves at `target.url`; `target.hits` lists the paths requested."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(status=403, text=BANNER)

    async def __aenter__(self) -> Target:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
