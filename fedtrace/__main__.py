"""``python -m fedtrace``: the same command as ``fedtrace`` (fedtrace.cli)."""

from fedtrace.cli import main

raise SystemExit(main())
