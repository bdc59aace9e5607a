"""The real pymap server as a test peer (see :mod:`pymap_deliver.localpymap`)."""

from pymap_deliver.localpymap import (
    DEMO_PASSWORD,
    DEMO_USER,
    PymapServer,
    TLSFiles,
    cleanup,
    free_port,
    make_maildir_server,
    pymap_executable,
)

__all__ = ["DEMO_PASSWORD", "DEMO_USER", "PymapServer", "TLSFiles", "cleanup", "free_port",
           "make_maildir_server", "pymap_executable"]
