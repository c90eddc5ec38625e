"""The data flywheel's cloud side: captured samples from devices, their review, and the one
action from reviewed samples to a better model on the same edge service (docs/flywheel.md)."""
