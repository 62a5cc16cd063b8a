#!/usr/bin/env python3
"""Fine-tune an ImageNet backbone: `python finetune.py --demo --weights none` or `--data DIR`. See --help."""

import sys

from inat_keras.cli import run_main
from inat_keras.finetune_cli import finetune_main

if __name__ == "__main__":
    sys.exit(run_main(finetune_main))
