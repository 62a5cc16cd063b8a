#!/usr/bin/env python3
"""Fine-tune an ImageNet backbone: `python finetune.py --demo` or `--data DIR`. See --help."""

import sys

from inat_keras.cli.finetune import main
from inat_keras.cli.run import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
