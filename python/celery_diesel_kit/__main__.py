"""python -m celery_diesel_kit: a Celery app's periodic tasks, for the beat.

    export -A APP               the routines as one JSON document on stdout
    sync -A APP [--beat PATH]   the routines written to the beat's table
                                (runs `beat sync --routines -`)
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig

# The beat's environment variable for each key of the export's `config`.
ENV_VARS = {
    "scheduler_db_uri": "SCHEDULER_DB_URI",
    "scheduler_max_interval": "SCHEDULER_MAX_INTERVAL",
    "scheduler_sync_every": "SCHEDULER_SYNC_EVERY",
    "celery_max_retry": "CELERY_MAX_RETRY",
    "celery_retry_delay": "CELERY_RETRY_DELAY",
    "create_table": "CREATE_TABLE",
    "broker_url": "CELERY_BROKER_URL",
    "timezone": "TIMEZONE",
}

# Other names the beat reads for a key: set, they too win over the app's value.
ALSO_READ = {"timezone": ("CELERY_TIMEZONE",)}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m celery_diesel_kit",
        description="A Celery app's periodic tasks, as celery-diesel-kit's beat reads them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export",
        help="print the app's routines, refused entries and settings as one JSON document",
    )
    export.add_argument("-A", "--app", required=True, help="the Celery app, as for celery -A")
    sync = commands.add_parser(
        "sync",
        help="write the app's routines to the beat's table (runs `beat sync --routines -`)",
    )
    sync.add_argument("-A", "--app", required=True, help="the Celery app, as for celery -A")
    sync.add_argument(
        "--beat",
        metavar="PATH",
        help="the beat binary (default: $CELERY_DIESEL_KIT_BEAT, else the one pip installed, "
        "else beat on PATH)",
    )
    args = parser.parse_args(argv)

    if args.command == "export":
        doc = _export(args.app)
        if doc is None:
            return 1
        print(json.dumps(doc, indent=2))
        return 0
    return _sync(args.app, args.beat)


def _export(spec):
    """The export of the app `spec` names, or None after saying on stderr why
    it could not be loaded."""
    from . import bridge

    # The app's modules are the user's: whatever they print goes to stderr,
    # so that stdout stays one JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            app = bridge.load_app(spec)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            print(f"error: cannot load the Celery app {spec!r}: {message}", file=sys.stderr)
            return None
        return bridge.export(app)


def _sync(spec, beat_option):
    beat = _find_beat(beat_option)
    if beat is None:
        print(
            "error: no beat binary: give --beat PATH, set CELERY_DIESEL_KIT_BEAT, "
            "or install the celery-diesel-kit wheel (pip install celery-diesel-kit)",
            file=sys.stderr,
        )
        return 1
    doc = _export(spec)
    if doc is None:
        return 1

    # A refused entry is still declared by the app: the beat must keep its
    # row rather than delete it as gone from the code.
    command = [beat, "sync", "--routines", "-"]
    for entry in doc["refused"]:
        print(f"refused: {entry['source']} {entry['name']!r}: {entry['reason']}", file=sys.stderr)
        name = entry["name"]
        # A name starting with "-" would read as an option on its own.
        command += [f"--keep={name}"] if name.startswith("-") else ["--keep", name]

    env = dict(os.environ)
    for key, value in doc["config"].items():
        names = (ENV_VARS[key],) + ALSO_READ.get(key, ())
        # As in the beat, the environment wins over the app's configuration
        # (and an empty variable counts as unset).
        if not any(os.environ.get(name, "").strip() for name in names):
            env[ENV_VARS[key]] = _env_value(value)

    sys.stderr.flush()
    routines = json.dumps(doc["routines"]).encode()
    try:
        status = subprocess.run(command, input=routines, env=env).returncode
    except OSError as exc:
        print(f"error: cannot run {beat}: {exc}", file=sys.stderr)
        return 1
    if status < 0:
        # Killed by a signal: the shell's convention.
        return 128 - status
    if status:
        return status
    return 1 if doc["refused"] else 0


def _find_beat(option):
    if option:
        return option
    if os.environ.get("CELERY_DIESEL_KIT_BEAT"):
        return os.environ["CELERY_DIESEL_KIT_BEAT"]
    # Where pip put the wheel's `beat`, which may not be on PATH (a
    # virtualenv that is not activated).
    name = "beat.exe" if os.name == "nt" else "beat"
    installed = os.path.join(sysconfig.get_path("scripts"), name)
    if os.path.isfile(installed):
        return installed
    return shutil.which("beat")


def _env_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
