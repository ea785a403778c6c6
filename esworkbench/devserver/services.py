"""The small services.

Gossip, and what the dev server answers for projections (not implemented; tooling probes them,
so they answer cleanly).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
from esdbclient.protos.Grpc import (
    gossip_pb2,
    gossip_pb2_grpc,
    projections_pb2_grpc,
    shared_pb2,
)

_TICKS_PER_NS = 100
_NOT_SUPPORTED = "The esworkbench development server does not implement {}"


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    """A one-node cluster whose only member is the leader, at the address clients dial.

    Args:
        address: Host clients should dial (compared by clients with the one they used).
        port: Port clients should dial.
    """

    def __init__(self, address: str, port: int) -> None:
        self._instance_id = str(uuid.uuid4())
        self.address = address
        self.port = port

    def Read(self, request: shared_pb2.Empty, context: grpc.ServicerContext) -> Any:
        """``ClusterInfo`` with a single alive leader."""
        member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=self._instance_id),
            time_stamp=time.time_ns() // _TICKS_PER_NS,
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(address=self.address, port=self.port),
        )
        return gossip_pb2.ClusterInfo(members=[member])


def _unimplemented(feature: str) -> Any:
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_SUPPORTED.format(feature))

    return handler


class ProjectionsServicer(projections_pb2_grpc.ProjectionsServicer):
    """Every projections call answers UNIMPLEMENTED."""

    Create = Update = Delete = Statistics = Disable = _unimplemented("projections")
    Enable = Reset = State = Result = RestartSubsystem = _unimplemented("projections")
