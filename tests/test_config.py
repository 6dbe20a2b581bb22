"""Config loading: the example config is valid, and every mistake is one clear error."""

from pathlib import Path

import pytest

from swarmnode.config import load_config
from swarmnode.errors import UserError

PROJECT = Path(__file__).resolve().parent.parent
SECRET = "s" * 32


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    cfg = tmp_path / "n.toml"
    cfg.write_text(body)
    return cfg


def profile_table(name: str = "desktop") -> str:
    example = PROJECT / "config"
    return f"""
[profiles.{name}]
repositories = ["{example / 'example/repo'}"]
portage_profile = "swarm/amd64"
portage_config = "{example / 'profiles/desktop'}"
distfiles = "{example / 'example/distfiles'}"
"""


def test_example_config_loads_with_relative_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMNODE_SECRET", SECRET)
    cfg = load_config(PROJECT / "config/swarmnode.toml")
    assert set(cfg.profiles) == {"desktop", "server"}
    desktop = cfg.profile("desktop")
    assert desktop.main_repository == PROJECT / "config/example/repo"
    assert desktop.world, "the world file of the profile is read"
    assert cfg.build.lease_ttl_s <= 10
    assert cfg.profile(None).name == "desktop"


@pytest.mark.parametrize("body, message", [
    ("[node]\nlisten = 'nope'\n", "node.listen must be HOST:PORT"),
    ("[cluster]\nsecret = 'short'\n", "at least 16 characters"),
    (f"[cluster]\nsecret = '{SECRET}'\n", "at least one [profiles.NAME]"),
    (f"[cluster]\nsecret = '{SECRET}'\n[build]\nlease_ttl_s = 'x'\n" + profile_table(),
     "build.lease_ttl_s must be a float"),
    (f"[cluster]\nsecret = '{SECRET}'\n[profiles.x]\nrepositories = ['/nonexistent']\n",
     "is not an ebuild repository"),
    (f"[cluster]\nsecret = '{SECRET}'\n" + profile_table().replace("swarm/amd64", "../../etc"),
     "portage_profile must name a profile"),
    ("this is = = not toml", "not valid TOML"),
    (f"[cluster]\nsecret = '{SECRET}'\n" + profile_table().replace("example/distfiles", "nope"),
     "distfiles"),
    (f"[node]\nraft = 'no-port'\n[cluster]\nsecret = '{SECRET}'\n" + profile_table(),
     "node.raft must be HOST:PORT"),
    (f"[node]\nlisten = '0.0.0.0:7700'\n[cluster]\nsecret = '{SECRET}'\n"
     "[discovery]\ninterfaces = ['no-such-if0']\n" + profile_table(),
     "node.raft must be set"),
    (f"[cluster]\nsecret = '{SECRET}'\nmax_voters = 0\n" + profile_table(),
     "cluster.max_voters must be at least 1"),
    (f"[cluster]\nsecret = '{SECRET}'\n[discovery]\ninterfaces = 'eth0'\n" + profile_table(),
     "discovery.interfaces must be a list"),
    (f"[cluster]\nsecret = '{SECRET}'\npeers = ['10.0.0.1']\n" + profile_table(),
     "cluster.peers[0] must be HOST:PORT"),
    (f"[cluster]\nsecret = '{SECRET}'\npeers = [7701]\n" + profile_table(),
     "cluster.peers[0] must be a"),
    (f"[cluster]\nsecret = '{SECRET}'\nreplicas = 0\n" + profile_table(),
     "cluster.replicas must be at least 1"),
    (f"[cluster]\nsecret = '{SECRET}'\n[build]\nemerge_log_jobs = -1\n" + profile_table(),
     "build.emerge_log_jobs must be 0"),
    (f"[cluster]\nsecret = '{SECRET}'\n[build]\nemerge_log = 5\n" + profile_table(),
     "build.emerge_log must be a str"),

])
def test_bad_config_is_one_clear_error(tmp_path: Path, body: str, message: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMNODE_SECRET", raising=False)
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, body))
    assert message in err.value.message


def test_portage_config_is_optional_with_explicit_world(tmp_path: Path) -> None:
    body = f"[cluster]\nsecret = '{SECRET}'\n" + profile_table().replace(
        "portage_config = ", "world = ['app-misc/greeter']\n# ")
    profile = load_config(write(tmp_path, body)).profile("desktop")
    assert profile.portage_config is None and profile.world == ("app-misc/greeter",)


def test_unknown_profile_names_the_known_ones(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"[cluster]\nsecret = '{SECRET}'\n" + profile_table()))
    with pytest.raises(UserError) as err:
        cfg.profile("nosuch")
    assert err.value.status == 404 and "desktop" in err.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_peers_drop_this_nodes_own_address_and_duplicates(tmp_path: Path) -> None:
    body = (f"[node]\nlisten = '127.0.0.1:7700'\n[cluster]\nsecret = '{SECRET}'\n"
            "peers = ['127.0.0.1:7701', '10.0.0.2:7701', '10.0.0.2:7701', '10.0.0.3:7701']\n"
            + profile_table())
    cfg = load_config(write(tmp_path, body))
    assert cfg.node.raft_address == "127.0.0.1:7701"  # default: listen port + 1
    assert cfg.cluster.peers == ("10.0.0.2:7701", "10.0.0.3:7701")
    assert cfg.cluster.replicas == 2


def test_a_wildcard_listener_offers_its_lan_address_to_peers(tmp_path: Path) -> None:
    """node.listen = 0.0.0.0 is what a LAN machine uses; its Raft address and URL default to
    its first non-loopback IPv4 address (no peer could use 127.0.0.1)."""
    import psutil
    import socket

    ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not ips:
        pytest.skip("this machine has no non-loopback IPv4 address")
    cfg_path = tmp_path / "swarmnode.toml"
    cfg_path.write_text(f"[node]\nlisten = '0.0.0.0:7700'\n[cluster]\nsecret = '{SECRET}'\n"
                        + profile_table())
    cfg = load_config(cfg_path)
    host = cfg.node.raft_address.rpartition(":")[0]
    assert host in ips and cfg.node.raft_address.endswith(":7701")
    assert cfg.node.advertise_url == f"http://{host}:7700"
    assert cfg.discovery.mdns and cfg.discovery.bootstrap_wait_s == 5.0


def test_the_hosts_emerge_log_is_read_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    base = f"[cluster]\nsecret = '{SECRET}'\n"
    assert load_config(write(tmp_path, base + profile_table())).build.emerge_log == \
        Path("/var/log/emerge.log")
    off = load_config(write(tmp_path, base + "[build]\nemerge_log = ''\n" + profile_table()))
    assert off.build.emerge_log is None
    rel = load_config(write(tmp_path, base + "[build]\nemerge_log = 'logs/emerge.log'\n"
                            "emerge_log_jobs = 12\n" + profile_table()))
    assert rel.build.emerge_log == tmp_path / "logs/emerge.log"
    assert rel.build.emerge_log_jobs == 12
