"""How a flag's text becomes a checked value: the parser every command uses, numbers with ranges, lists,
class names and cache paths. A value out of range is one line naming the flag, before anything loads."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from inat_keras.errors import UserError


class Parser(argparse.ArgumentParser):
    """Every command's parser: a wrong flag is one line and a pointer to ``--help``, not 35 lines of usage first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class Number:
    """An argparse ``type=`` for a number in a range, checked at parsing: ``Number(int, low=1)``.

    ``low``/``high`` are inclusive, ``above``/``below`` exclusive; NaN and infinity are never in range.
    """

    def __init__(
        self,
        kind: type,
        *,
        low: float | None = None,
        high: float | None = None,
        above: float | None = None,
        below: float | None = None,
        example: str = "",
    ) -> None:
        self.kind, self.low, self.high, self.above, self.below = kind, low, high, above, below
        self.__name__ = "an integer" if kind is int else "a finite number"
        bounds = [(">=", low), (">", above), ("<=", high), ("<", below)]
        self.range = " and ".join(f"{sign} {bound:.15g}" for sign, bound in bounds if bound is not None)
        self.example = example

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.__name__}{self.hint()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {self.__name__} {self.range}{self.hint()}")
        return value

    def contains(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )

    def hint(self) -> str:
        return f" (e.g. {self.example})" if self.example else ""


positive_int = Number(int, low=1)


non_negative_int = Number(int, low=0)


positive_float = Number(float, above=0)


non_negative_float = Number(float, low=0)


fraction = Number(float, low=0, below=1)  # dropouts, momenta, decays: 1 would freeze or drop everything


probability = Number(float, low=0, high=1)


seed = Number(int, low=0, below=2**32, example="0 or 42")  # NumPy and scikit-learn take seeds in [0, 2**32)


learning_rate = Number(float, above=0, example="1e-3")


def positive_int_list(text: str) -> list[int]:
    """``32,64,128``: a list of whole numbers, each at least 1."""
    values = int_list(text)
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1, like 32,64,128")
    return values


def cache_target(text: str) -> str:
    """``--cache``: memory, none, or a file prefix in a folder that exists (it is not created behind the user's back)."""
    if text in ("memory", "none"):
        return text
    parent = Path(text).expanduser().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {parent} does not exist; create it first, or use --cache memory")
    return text


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers like 32,64,128") from None


def parse_classes(value: str) -> list[str]:
    """``--classes``: a comma-separated list, or a text file with one class name per line."""
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in value.split(",")]
    names = [name for name in names if name]
    if not names:
        raise UserError(f"--classes {value!r} names no classes: give them as a,b,c or a file with one per line")
    return names
