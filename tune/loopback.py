"""Keeping an embedded Ray instance on 127.0.0.1.

Ray 2.60 replaces a loopback node address (``--node-ip-address=127.0.0.1``, ``_node_ip_address``)
with the machine's outward-facing address and binds its servers on every interface, unless its
multi-node support is switched off through ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. That switch is
read once, when Ray is imported, so it must be set before: the command line does it for every
launch that starts its own Ray (no ``--address``). A launch that joins a cluster leaves it alone,
since a driver on a cluster node must announce that node's real address.
"""

from __future__ import annotations

import os
import sys

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_embedded_ray_on_loopback() -> bool:
    """Set the switch if Ray is not imported yet; return whether an embedded Ray will be local."""
    if "ray" not in sys.modules:
        os.environ.setdefault(SWITCH, "0")
    return os.environ.get(SWITCH) == "0"
