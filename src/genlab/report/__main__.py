"""`python -m genlab.report ...`: the same as genlab-report."""

import sys

from genlab.report.cli import main

sys.exit(main())
