"""Vector search inside PostgreSQL with pgvector (used when the database is PostgreSQL)."""
