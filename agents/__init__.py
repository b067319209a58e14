"""trainyard.agents: environments and RLlib algorithms for `kind: rl` jobs."""
