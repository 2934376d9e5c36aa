"""Conveyor's native gRPC front end: inference.GRPCInferenceService on gRPC C++.

`Server` accepts calls on gRPC's own threads and hands them to an asyncio event loop in
groups; runtime.protocol.grpc_native drives it. The tuples it exchanges are described in
_native.pyi.
"""

from conveyor_grpc_native._native import Blob, Server

__all__ = ["Blob", "Server"]
