"""`python -m runtime` runs the `conveyor` command."""

import sys

from runtime.cli import main

sys.exit(main())
