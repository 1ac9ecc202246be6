"""``python -m depthattn ...`` runs the `depthattn` command."""

import sys

from depthattn.cli import main

sys.exit(main())
