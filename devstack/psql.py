"""`make psql`: an interactive psql on the properties store the demo used.

MLS_DATABASE_URL when set; otherwise the embedded PostgreSQL in .data/pg (started for the session,
stopped when psql exits), using the psql that ships with pgserver.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack import ROOT, embedded_postgres


def main() -> int:
    url = os.environ.get("MLS_DATABASE_URL")
    import pgserver

    psql = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    if url:
        return subprocess.call([str(psql), url.replace("postgresql+psycopg2://", "postgresql://")])
    if not (ROOT / ".data" / "pg").exists():
        print("no demo database yet: run `make demo` first", file=sys.stderr)
        return 2
    with embedded_postgres(ROOT / ".data" / "pg") as embedded:
        return subprocess.call([str(psql), embedded])


if __name__ == "__main__":
    sys.exit(main())
