"""`swarmnode init`: prepare a machine's node before its first start.

Creates the cluster secret file if the config names one that is missing, the data directory,
and the swarm's signing key, and says what to do next. Safe to run again: nothing that exists
is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from swarmnode.config import create_missing_secret, load_config
from swarmnode.node.runtime import NodePaths
from swarmnode.portage import signing


@dataclass(frozen=True)
class InitReport:
    config: Path
    node_id: str
    data_dir: Path
    secret_file: Path | None  # written now (None: it existed or the secret is inline)
    fingerprint: str
    public_key: str
    profiles: tuple[str, ...]
    url: str


def init_node(config_path: Path) -> InitReport:
    secret_file = create_missing_secret(config_path)
    cfg = load_config(config_path)
    paths = NodePaths(cfg.node.data_dir)
    for d in (paths.state, paths.store, paths.binhost, paths.builds, paths.work):
        d.mkdir(parents=True, exist_ok=True)
    key = signing.ensure_signing_key(paths.gpg, name=f"swarmnode {cfg.cluster.name}")
    public = signing.export_public_key(key)
    signing.stop_gpg_agent(paths.gpg)
    return InitReport(cfg.path, cfg.node.node_id, cfg.node.data_dir, secret_file,
                      key.fingerprint, public, tuple(cfg.profiles), cfg.node.advertise_url)
