"""``python -m actionstate``: the same as the ``actionstate`` command."""

import sys

from actionstate.cli import main

sys.exit(main())
