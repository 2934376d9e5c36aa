"""inference.GRPCInferenceService on gRPC C++ (the conveyor_grpc_native extension)."""
