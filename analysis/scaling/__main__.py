"""``python -m analysis.scaling``: the same command as ``python -m analysis scaling``."""

import sys

from analysis.scaling.command import main

sys.exit(main())
