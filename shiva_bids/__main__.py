"""`python -m shiva_bids ...` behaves exactly like the `shiva-bids` command."""
import sys

from shiva_bids.cli import main

if __name__ == "__main__":
    sys.exit(main())
