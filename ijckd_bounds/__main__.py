"""``python -m ijckd_bounds ...`` runs the ``ijckd-bounds`` command line (also under torchrun)."""

import sys

from ijckd_bounds.app.cli import main

sys.exit(main())
