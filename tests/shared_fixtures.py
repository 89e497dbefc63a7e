"""Where the recorded RETS responses (shared/fixtures, maintained outside this repo) are.

CI lays `shared/` beside the clone; a developer's checkout has it at ../shared as well.
MLS_SHARED_FIXTURES overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [Path(os.environ["MLS_SHARED_FIXTURES"])] if os.environ.get("MLS_SHARED_FIXTURES") else []
CANDIDATES += [ROOT.parent / "shared" / "fixtures", Path("/work/shared/fixtures")]
SHARED_FIXTURES = next((p for p in CANDIDATES if p.is_dir()), CANDIDATES[0])
