"""swarmnode: a peer-to-peer build swarm for Gentoo binary packages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swarmnode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
