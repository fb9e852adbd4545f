"""A float32 vector column: raw bytes on SQLite, a pgvector `vector` on PostgreSQL.

Python code always sees little-endian float32 bytes, as with a BinaryField, so the rest of
the product does not care which database it runs on; PostgreSQL gets a real vector
column that an HNSW index and SQL similarity queries can use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.db import models


def vector_bytes(vector: np.ndarray) -> bytes:
    """The stored form of a vector (embeddings, reduced vectors, PCA parts): float32 bytes."""
    return np.asarray(vector, dtype=np.float32).tobytes()


def vector_from(blob: Any) -> np.ndarray:
    """A stored vector back as float32 (read-only; copy it to change it). Accepts the bytes
    of SQLite, memoryviews, and pgvector's text or array form."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        blob = pgvector_parse(blob)
    return np.frombuffer(bytes(blob), dtype=np.float32)


def pgvector_literal(vector: np.ndarray) -> str:
    """pgvector's text form of a vector: '[x1,x2,...]'."""
    return "[" + ",".join(f"{float(v):.9g}" for v in np.asarray(vector, dtype=np.float32).ravel()) + "]"


def pgvector_parse(value: Any) -> bytes:
    """float32 bytes from what psycopg returns for a vector: pgvector's `Vector` (or a numpy
    array, with older pgvector) once its adapter is registered, which a connection opened
    after the extension exists does; else the text form."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=np.float32).tobytes()
    text = bytes(value).decode() if isinstance(value, bytes | memoryview) else str(value)
    return np.array(text.strip("[]").split(","), dtype=np.float32).tobytes()


class VectorBytesField(models.BinaryField):
    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "postgresql":
            return "vector"
        return super().db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if connection.vendor == "postgresql" and value is not None:
            return pgvector_literal(np.frombuffer(bytes(value), dtype=np.float32))
        return super().get_db_prep_value(value, connection, prepared)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None or connection.vendor != "postgresql":
            return value
        return pgvector_parse(value)


def register_pgvector(connection: Any) -> None:
    """Let psycopg read vectors as numpy arrays (binary, fast) once the extension exists."""
    if connection.vendor != "postgresql":
        return
    from pgvector.psycopg import register_vector

    try:
        register_vector(connection.connection)
    except Exception:  # the extension is created by the first migration; until then, text
        if not connection.connection.autocommit and connection.connection.info.transaction_status:
            connection.connection.rollback()
