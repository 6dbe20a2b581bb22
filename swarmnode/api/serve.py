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
    await node.start()  # the API answers only once the node is ready
    site = web.TCPSite(runner, config.node.listen_host, config.node.listen_port)
    await site.start()
    log.info("node %s serving on http://%s:%d (cluster %s, profiles %s)", config.node.node_id,
             config.node.listen_host, config.node.listen_port, config.cluster.name,
             ", ".join(config.profiles))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await node.stop()
    await runner.cleanup()


def serve(config: Config) -> None:
    uvloop.run(_serve(config))
