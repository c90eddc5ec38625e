"""Users, roles, per-user API tokens and dashboard sessions."""
