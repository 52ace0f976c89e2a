"""Database: SQLModel tables, the async engine, and Alembic migrations for SQLite and PostgreSQL."""
