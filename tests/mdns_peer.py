"""A test peer: one MdnsDiscovery in this process (run inside a netns), driven by JSON lines.

argv: ADVERT_JSON [INTERFACE ...]. stdin: {"update": {advert fields}} or {"close": true}
(EOF closes too). stdout, one JSON object a line: {"started": instance}, then
{"sightings": {instance: {...}}} whenever they change, {"updated": true}, {"closed": true}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

from swarmnode.discovery.mdns import Advert, MdnsDiscovery, Sighting


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def snapshot(sightings: dict[str, Sighting]) -> dict[str, Any]:
    return {k: {**asdict(s), "api_url": s.api_url} for k, s in sightings.items()}


def advert(fields: dict[str, Any]) -> Advert:
    return Advert(**{**fields, "addresses": tuple(fields.get("addresses", ()))})


async def main(argv: list[str]) -> None:
    disc = MdnsDiscovery(advert(json.loads(argv[0])), tuple(argv[1:]))
    await disc.start()
    emit({"started": disc.instance})

    async def report() -> None:
        emit({"sightings": snapshot(disc.sightings())})
        while True:
            await disc.wait_changed(3600)
            emit({"sightings": snapshot(disc.sightings())})

    reporter = asyncio.create_task(report())
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        msg = json.loads(line)
        if "update" in msg:
            await disc.update(advert(msg["update"]))
            emit({"updated": True})
        if msg.get("close"):
            break
    reporter.cancel()
    await disc.close()
    emit({"closed": True})


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("zeroconf").setLevel(logging.INFO)
    asyncio.run(main(sys.argv[1:]))
