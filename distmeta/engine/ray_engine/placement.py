"""Where the engine's actors go: spread over the cluster, or inside a caller's placement group.

Inside a Ray Tune trial (or any task that reserved a placement group), the engine's actors
must use the group's bundles, so that trials never take each other's resources: bundle 0 is
the caller's own (the learner, which needs no CPU, joins it), and the task workers take the
remaining bundles in turn. Elsewhere workers spread over nodes and the learner stays beside
the driver.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = ["learner_strategy", "worker_strategy"]


def worker_strategy(index: int):
    """Scheduling strategy of task worker ``index``."""
    group = ray.util.get_current_placement_group()
    if group is None:
        return "SPREAD"
    spare = group.bundle_count - 1
    bundle = 1 + index % spare if spare > 0 else 0
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle)


def learner_strategy():
    """Scheduling strategy of the learner actor."""
    group = ray.util.get_current_placement_group()
    if group is not None:
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    # Beside the driver (the head node for a Ray Job), not on a worker node that may be
    # scaled down; elsewhere if that node is gone.
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
