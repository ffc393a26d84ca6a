"""The fat client: read and write paths through the tiers, and the fsspec filesystem."""
