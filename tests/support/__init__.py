"""Real processes for tests: ``service serve`` and the CLI, private Redis and PostgreSQL."""
