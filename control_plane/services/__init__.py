"""Domain services: the only code that changes state. Routes and the fleet channel call these."""
