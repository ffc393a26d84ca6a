"""Host-memory cache tiers: L1 (this host) and L2 (peer hosts)."""
