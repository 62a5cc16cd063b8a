"""Running a command: a ``UserError`` becomes one line on stderr and exit status 2; a finished run is reported."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from inat_keras.errors import UserError


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter; set before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command, turning a UserError into one line on stderr and exit status 2."""
    quiet_tensorflow()
    try:
        return main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
