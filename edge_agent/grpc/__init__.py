"""gRPC transport: converters, servicers, status mapping, server assembly, and the CLI's client.

Translation only, no logic: the only agent package besides ``fleet/codec.py`` that sees protobuf.
"""
