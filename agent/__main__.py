"""`python -m agent` is the `node-agent` command."""

import sys

from agent.cli import main

sys.exit(main())
