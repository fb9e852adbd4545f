"""`manage.py doctor`: is this install healthy, and if not, what to do."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.operations import checks


class Command(BaseCommand):
    help = "Check this install (database, migrations, backbones, broker, workers per lane, disk, permissions, progress, backups): one line per check with OK/WARN/FAIL and a fix. Exits 1 when any check fails."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print the checks as JSON")
        parser.add_argument("--timeout", type=float, default=None, help="seconds the broker and workers get to answer")

    def handle(self, *args: Any, **options: Any) -> None:
        results = checks.run_checks(broker=checks.broker_state(timeout=options["timeout"]))
        overall = checks.worst(results)
        if options["json"]:
            self.stdout.write(json.dumps({"status": overall, "checks": [c.as_dict() for c in results]}, indent=1))
        else:
            width = max(len(c.name) for c in results)
            for c in results:
                line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
                style = {"OK": self.style.SUCCESS, "WARN": self.style.WARNING}.get(c.status, self.style.ERROR)
                self.stdout.write(style(line))
                if c.hint and c.status != checks.OK:
                    self.stdout.write(f"      {'':<{width}}  → {c.hint}")
        if overall == checks.FAIL:
            raise CommandError("some checks failed", returncode=1)
