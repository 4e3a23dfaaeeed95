"""`python -m fedtrace.cli`."""

import sys

from fedtrace.cli import main

sys.exit(main())
