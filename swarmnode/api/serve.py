"""`swarmnode serve`: run one node — its loops and its HTTP API — until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from swarmnode.api.app import create_app
from swarmnode.config import Config
from swarmnode.node.runtime import Node

log = logging.getLogger(__name__)


async def _serve(config: Config) -> None:
    node = Node(config)
    app = create_app(node)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.node.listen_host, config.node.listen_port)
    await site.start()  # answers the join handshake at once, everything else once ready
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(node.start())
    try:
        await asyncio.wait([starting, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a start-up error (e.g. the Raft port is taken) ends serve
            log.info("node %s serving on http://%s:%d (cluster %s, %s, profiles %s)",
                     config.node.node_id, config.node.listen_host, config.node.listen_port,
                     config.cluster.name, "voter" if node.log.is_voter else "non-voting worker",
                     ", ".join(config.profiles))
            await stop.wait()
        log.info("stopping")
    finally:
        starting.cancel()
        await node.stop()
        await runner.cleanup()


def serve(config: Config) -> None:
    uvloop.run(_serve(config))
