"""Flat metadata: one record per blob, found by one point lookup."""

from blobtier.metadata.schema import BlobRecord, validate_key, validate_prefix
from blobtier.metadata.store import MetadataStore

__all__ = ["BlobRecord", "MetadataStore", "validate_key", "validate_prefix"]
