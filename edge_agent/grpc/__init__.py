"""gRPC transport: converters, servicers and server assembly. Translation only, no logic."""
