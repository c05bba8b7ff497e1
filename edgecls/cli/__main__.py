"""`python -m edgecls.cli ...`: the `edgecls` command."""
import sys

from . import main

sys.exit(main())
