"""`python -m tvmdeploy ...`: the same as the `tvmdeploy` command."""

import sys

from .cli.main import main

sys.exit(main())
