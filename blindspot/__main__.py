"""``python -m blindspot`` is the ``blindspot`` command."""

import sys

from blindspot.cli import main

sys.exit(main())
