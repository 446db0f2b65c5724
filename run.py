#!/usr/bin/env python3
"""BIDS-App entry point (the container ENTRYPOINT): `run.py bids_dir output_dir {participant,group}`."""
import sys

from shiva_bids.cli import main

if __name__ == "__main__":
    sys.exit(main())
