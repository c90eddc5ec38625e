"""Device telemetry: records sent over the fleet channel, stored exactly once, read by the API."""
