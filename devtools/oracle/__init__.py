"""An independent oracle for a whole dbsync run: it proves, with its own SQL over uuids, that central holds what the
sites wrote, as a stranger would check it.

It deliberately imports nothing of ``dbsync_cli`` (nor any dev tool that does): only PyMySQL and the standard
library, so that a bug in the product's schema model, canonical form or time zone handling cannot hide itself here.
``tests/unit/test_oracle.py`` enforces that.
"""

from devtools.oracle.checks import Oracle, OracleInput, Verdict
from devtools.oracle.db import DbConn
from devtools.oracle.rows import snapshot_central_rows

__all__ = ["DbConn", "Oracle", "OracleInput", "Verdict", "snapshot_central_rows"]
