"""RETS 1.7.2 / 1.8 source: session, COMPACT streaming parser, search walk, GetObject, metadata."""

from mls_sync.sources.rets.source import RetsSource

__all__ = ["RetsSource"]
