"""Training jobs, TensorBoard visualization and the model registry."""
