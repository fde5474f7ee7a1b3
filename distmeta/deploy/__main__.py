"""``python -m distmeta.deploy [ROOT]``: check every deployment file of a checkout."""

import sys

from distmeta.deploy.validate import main

sys.exit(main())
