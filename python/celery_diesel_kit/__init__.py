"""celery-diesel-kit's Python side: the `beat` binary for a Celery app.

    python -m celery_diesel_kit export -A proj     # the app's routines as JSON
    python -m celery_diesel_kit sync -A proj       # ... written to the beat's table

`SyncTask` and `AsyncTask` replace celery-sqlalchemy-kit's task classes.
Importing this package does not import Celery; the classes load on first use.
"""

from importlib import metadata

try:
    __version__ = metadata.version("celery-diesel-kit")
except metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = ["AsyncTask", "SyncTask", "__version__"]


def __getattr__(name):
    if name in ("SyncTask", "AsyncTask"):
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
