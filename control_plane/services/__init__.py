"""Services: a registered model deployed to be called, online (cloud agent replicas) for now.

One runtime everywhere: an online service's replicas are ``edge-agent`` processes the control
plane starts and supervises on its own machine (``supervisor.py``). Each replica joins the fleet
as a device of its own (``svc-<service>-<n>``, labelled ``service=<name>``), so models reach it the
way they reach any device: a deployment of the registry's signed package, pulled over the fleet
channel, verified, self-tested and hot-swapped by the agent.
"""
