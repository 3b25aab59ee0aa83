"""Loaded first by a process started with this folder on its PYTHONPATH: records its statements when
DBSYNC_STATEMENT_LOG names a file (devtools/statement_log.py)."""

import os

if os.environ.get("DBSYNC_STATEMENT_LOG"):
    import devtools.statement_log  # noqa: F401 - installs the recorder on import
