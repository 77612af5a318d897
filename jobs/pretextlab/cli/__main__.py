"""``python -m pretextlab.cli`` = the ``pretextlab`` command."""

import sys

from pretextlab.cli import main

sys.exit(main())
