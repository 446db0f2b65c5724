"""`python -m shiva_bids ...` behaves exactly like the `shiva-bids` command."""
import sys

from shiva_bids.cli import main

sys.exit(main())
