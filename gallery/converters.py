"""URL converters: a row id is at most 18 digits, so an id past the database's 64-bit
integers is an unknown page (404), never a database error."""

from __future__ import annotations

from django.urls import register_converter


class RowId:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(int(value))


register_converter(RowId, "id")
