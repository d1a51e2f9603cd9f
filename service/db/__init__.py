"""PostgreSQL (or the embedded SQLite) behind one pooled SQLAlchemy AsyncEngine."""
