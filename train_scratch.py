#!/usr/bin/env python3
"""Train the from-scratch CNN: `python train_scratch.py --demo` or `--data DIR`. See --help."""

import sys

from inat_keras.cli.run import run_main
from inat_keras.cli.train_scratch import main

if __name__ == "__main__":
    sys.exit(run_main(main))
