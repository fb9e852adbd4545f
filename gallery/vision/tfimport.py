"""Import TensorFlow without its start-up notices.

TensorFlow's native libraries print INFO notices straight to the process's stderr while
they load ("oneDNN custom operations are on ...", absl's "All log messages before
absl::InitializeLog() ..."), ignoring TF_CPP_MIN_LOG_LEVEL. For the length of the import
only, stderr is passed through a filter that drops absl INFO lines and lets everything
else through in order (warnings, errors, other threads' log lines).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# absl's INFO lines ("I1202 20:33:35.123 ...", "I0000 00:00:..."), its note about them, and
# the second line of the CPU-features notice.
NOTICE = re.compile(
    rb"^(I\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog\(\) is called|To enable the following instructions: )"
)

_lock = threading.Lock()


@contextlib.contextmanager
def filtered_stderr(drop: re.Pattern[bytes] = NOTICE) -> Iterator[None]:
    """Route file descriptor 2 through a filter thread while the block runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no usable stderr: nothing to filter
        yield
        return

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not drop.match(line):
                    os.write(saved, line)

    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the filter drains and ends
        thread.join(timeout=5)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once per process, its native notices filtered out."""
    with _lock:
        if "tensorflow" in sys.modules:
            return
        with filtered_stderr():
            import tensorflow  # noqa: F401
