"""ADS over gRPC: resource encoding (`encode`), per-stream protocol state (`stream`, sans-IO), the grpcio server."""
