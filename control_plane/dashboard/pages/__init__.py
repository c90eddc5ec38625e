"""One module of pages per area; each holds a ``router`` that ``dashboard.routes`` collects."""
