"""The node provider of the local cluster: Ray's fake_multinode provider plus what a cloud does
when a machine dies.

With the stock provider a worker node whose processes were killed stays in the provider's list
forever, and Ray 2.60's v1 autoscaler keeps counting it as a node still starting ("uninitialized"):
a trial waiting for that node's CPUs then waits forever, because no replacement is launched
(measured: nothing in 5 minutes). A cloud reports a lost machine as terminated; this provider does
the same for a node whose raylet has exited, so the autoscaler launches a new node for the work.
local_cluster.up writes `type: external, module:
mgd_ray.distributed.local_provider.LocalNodeProvider` into the autoscaler config it generates from
cluster-local.yaml.
"""

from __future__ import annotations

import logging

from mgd_ray.distributed.ray_private import PROCESS_TYPE_RAYLET, FakeMultiNodeProvider

logger = logging.getLogger(__name__)
MODULE = f"{__name__}.LocalNodeProvider"


def raylet_exited(node) -> bool:
    """True when a fake node's raylet process has exited (None: the head, whose processes are not
    ours)."""
    if node is None:
        return False
    raylets = node.all_processes.get(PROCESS_TYPE_RAYLET) or []
    return bool(raylets) and raylets[0].process.poll() is not None


class LocalNodeProvider(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters):
        with self.lock:
            for node_id, info in list(self._nodes.items()):
                if raylet_exited(info.get("node")):
                    logger.warning(
                        f"node {node_id}: its raylet exited; reported terminated, as a cloud "
                        "reports a lost machine"
                    )
                    del self._nodes[node_id]
                    self._terminate_node(info)  # stops whatever of it is still running
        return super().non_terminated_nodes(tag_filters)
