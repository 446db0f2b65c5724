"""Run by `main` inside the shiva-bids container: `python3 run.py config.json`."""
import sys

from shiva_brainlife.app import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
