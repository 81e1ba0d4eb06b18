"""``python -m edgedet`` is the ``edgedet`` command."""

import sys

from edgedet.cli import main

sys.exit(main())
