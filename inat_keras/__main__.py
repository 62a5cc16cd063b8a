"""``python -m inat_keras <command>``: see ``inat_keras.cli.main``."""

import sys

from inat_keras.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
