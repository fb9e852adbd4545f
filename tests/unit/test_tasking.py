"""Tasks looked up by name while the task modules load: two requests of one web process
queueing their first uploads at the same moment both find the task (one got a 500,
"NotRegistered", when Celery handed the modules to the other request)."""

from __future__ import annotations

import threading
import time

import pytest

from gallery import tasking
from imagesearch.celery import app


def test_concurrent_first_lookups_wait_for_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "gallery.test_only_task"
    pending = ["the task module"]  # handed to the first caller only, as Celery's loader does

    def import_default_modules() -> None:
        if pending:
            pending.pop()
            time.sleep(0.2)  # importing
            app.tasks[name] = object()

    monkeypatch.setattr(app.loader, "import_default_modules", import_default_modules)
    found: list[object] = []
    errors: list[BaseException] = []

    def look_up() -> None:
        try:
            found.append(tasking.task_named(name))
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)

    try:
        threads = [threading.Thread(target=look_up) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        app.tasks.pop(name, None)
    assert errors == []
    assert len(found) == 4 and len({id(f) for f in found}) == 1
