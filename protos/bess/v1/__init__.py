"""EdgeLink v1: the gRPC contract between edge agent and control plane (see edgelink.proto)."""
