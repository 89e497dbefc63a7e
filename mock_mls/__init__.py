"""Standalone mock MLS: RETS 1.7.2 + RESO Web API + photo URLs over deterministic listings.

`MockMLS` is the demo's provider, the integration tests' provider and the benchmark's load.
"""

from .server import MockMLS

__all__ = ["MockMLS"]
