"""``python -m service`` is the ``service`` command."""

import sys

from service.cli import main

sys.exit(main())
