"""The fleet channel: all MQTT I/O (service.py), protobuf mapping (codec.py), broker files
(broker_config.py) and the embedded development broker (embedded_broker.py)."""
