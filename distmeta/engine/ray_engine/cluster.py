"""Connect to Ray: join a cluster, or start a local instance that listens on loopback only."""

from __future__ import annotations

import logging
import os

import ray

from distmeta.config import EngineConfig

__all__ = ["RayConnection"]


class RayConnection:
    """Ray for one training run; shuts down only an instance it started itself.

    With an address (``engine.address``, else ``RAY_ADDRESS`` as set for a Ray Job's driver:
    ``auto``, ``ray://host:10001``) it joins that cluster; without one it starts a local Ray
    bound to 127.0.0.1 (Ray's default is every interface) without the dashboard. Inside a
    process where Ray is already up (a Ray Tune trial, a test session) it uses that instance.
    """

    def __init__(self, config: EngineConfig):
        self.started_here = False
        if ray.is_initialized():
            return
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local",  # never the last `ray start`'s cluster, which may be dead
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        self.started_here = True

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()
        self.started_here = False
