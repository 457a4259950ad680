"""``python -m segray``: the `segray` command line."""

import sys

from segray.cli import main

sys.exit(main())
