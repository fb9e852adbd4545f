"""The admin of every domain (Django's admin autodiscovery imports this module)."""

from .copyright import admin as copyright_admin
from .curation import admin as curation_admin

__all__ = ["copyright_admin", "curation_admin"]
