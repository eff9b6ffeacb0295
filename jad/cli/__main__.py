"""``python -m jad.cli``: the ``jad`` command."""

import sys

from jad.cli.main import main

sys.exit(main())
