"""One class per REST resource; each method names the route it calls (``@route``)."""
