"""Storage backends. SQLite (stdlib, WAL) is the embedded default."""

from securemail.store.sqlite import open_database

__all__ = ["open_database"]
