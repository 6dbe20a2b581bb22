"""How a node finds the other members of its swarm (mDNS, Tailscale) and proves it belongs."""
