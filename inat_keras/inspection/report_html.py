"""The building blocks of report.html: pictures embedded as data URIs, key-value and plain tables, values
formatted for people, and the Jinja2 environment that renders the pages."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from PIL import Image, UnidentifiedImageError

import inat_keras

THUMBNAIL_SIDE = 112


# A picture larger than this (a 10-class prediction grid is ~2.5 MB of PNG) is embedded as a JPEG,
# which keeps its photographs legible at a fifth of the size.
MAX_EMBEDDED_PNG_BYTES = 1_000_000


MAX_EMBEDDED_SIDE = 2400


JPEG_QUALITY = 85


# The model settings worth a column in the layer table read from best.keras.
# What a table shows for a value a file does not hold.
MISSING = "\N{EN DASH}"


@dataclass
class Figure:
    """One embedded picture: its ``data:`` URI, a caption, and the file it came from."""

    title: str
    uri: str
    source: str
    caption: str = ""


@dataclass
class Table:
    """A table of already formatted cells; ``sort_keys`` hold raw values for the sortable search table."""

    header: list[str]
    rows: list[list[str]]
    sort_keys: list[list[str]] | None = None
    numeric: list[bool] = field(default_factory=list)


@dataclass
class Notes:
    """Files that exist but could not be read: shown at the top of the page rather than stopping it."""

    items: list[str] = field(default_factory=list)

    def json(self, path: Path, *, fix: str) -> Any:
        """``path`` parsed, or None when absent; a damaged file becomes a note naming ``fix``."""
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as error:
            self.items.append(f"{path} is damaged ({error}): {fix}")
            return None

    def csv(self, path: Path, *, fix: str) -> list[dict[str, str]] | None:
        if not path.is_file():
            return None
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        except (ValueError, UnicodeDecodeError, OSError, csv.Error) as error:
            self.items.append(f"{path} is damaged ({error}): {fix}")
            return None


def image_data_uri(path: Path) -> str | None:
    """The picture at ``path`` as a ``data:`` URI (a large PNG re-encoded as JPEG), or None if absent or unreadable."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    if len(data) > MAX_EMBEDDED_PNG_BYTES:
        try:
            with Image.open(io.BytesIO(data)) as image:
                picture = image.convert("RGB")
        except (UnidentifiedImageError, OSError):
            return None
        picture.thumbnail((MAX_EMBEDDED_SIDE, MAX_EMBEDDED_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        data, mime = buffer.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_data_uri(path: str | os.PathLike, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small PNG of an image file, or None if it is gone or unreadable (the dataset may have moved)."""
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    # Upscaled as well as shrunk: a 32-px test image would otherwise be a postage stamp.
    scale = side / max(picture.size)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def figure(directory: Path, name: str, title: str, caption: str = "") -> Figure | None:
    uri = image_data_uri(directory / name)
    return None if uri is None else Figure(title, uri, str(directory / name), caption)


def format_value(value: Any) -> str:
    """A setting or a number as a reader wants it: 0.001 not 1e-03, 26,294 not 26294, lists without brackets."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) or MISSING
    if isinstance(value, dict):
        return ", ".join(f"{key}: {format_value(item)}" for key, item in value.items()) or MISSING
    return str(value)


def flatten(settings: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as (dotted key, value) pairs, in key order."""
    pairs: list[tuple[str, Any]] = []
    for key in sorted(settings):
        value = settings[key]
        if isinstance(value, dict) and value:
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def key_values(pairs: Iterable[tuple[str, Any]], *, header: bool = True) -> Table:
    """A two-column table; without ``header`` for facts, whose names say enough."""
    return Table(["setting", "value"] if header else [], [[key, format_value(value)] for key, value in pairs])


def percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else MISSING


def fixed(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else MISSING


def command(*words: str | os.PathLike) -> str:
    """A command line a reader can paste (paths with spaces quoted)."""
    return "python -m inat_keras " + shlex.join(os.fspath(word) for word in words)


def markdown_html(text: str) -> Markup:
    """The small Markdown ``summary.md`` uses (headings, paragraphs, lists, tables, **bold**, `code`) as HTML."""

    def inline(line: str) -> str:
        html = str(escape(line))
        html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", html)

    def cells(line: str) -> list[str]:
        return [inline(part.strip()) for part in line.strip().strip("|").split("|")]

    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
        elif heading := re.match(r"(#{1,4})\s+(.*)", line):
            level = len(heading.group(1)) + 2  # the page's own h1 and h2 come first
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            index += 1
        elif line.lstrip().startswith("|"):
            block = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                block.append(lines[index])
                index += 1
            body = [row for row in block[1:] if not re.fullmatch(r"[\s|:\-]+", row)]
            head = "".join(f"<th>{c}</th>" for c in cells(block[0]))
            rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(row)) + "</tr>" for row in body)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif re.match(r"\s*[-*]\s", line):
            items = []
            while index < len(lines) and re.match(r"\s*[-*]\s", lines[index]):
                item = re.sub(r"^\s*[-*]\s", "", lines[index])
                items.append(f"<li>{inline(item)}</li>")
                index += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        else:
            # The first line always belongs to the paragraph (a "**bold**" line must not stop it before it starts).
            paragraph = [inline(line)]
            index += 1
            while index < len(lines) and lines[index].strip() and not re.match(r"#|\s*[-*]\s|\s*\|", lines[index]):
                paragraph.append(inline(lines[index]))
                index += 1
            out.append(f"<p>{' '.join(paragraph)}</p>")
    return Markup("\n".join(out))


def environment() -> jinja2.Environment:
    # Autoescape: class names, paths and settings come from the user's files.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("inat_keras.inspection", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    written = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return environment().get_template(template).render(version=inat_keras.__version__, written=written, **context)


def relative_link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target, page_dir)).as_posix()


def macs_text(macs: Any) -> str:
    if not isinstance(macs, (int, float)):
        return MISSING
    return f"{macs / 1e6:,.1f} M multiply-accumulates per image ({macs:,} MACs)"


def seconds_text(seconds: Any, rate: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return MISSING
    text = f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"
    return text + (f", {rate:,.1f} training images/s" if isinstance(rate, (int, float)) else "")


def imbalance_text(imbalance: Any) -> str:
    if not isinstance(imbalance, dict):
        return MISSING
    return "; ".join(
        f"{folder}/ {format_value(values.get('ratio'))}×" for folder, values in imbalance.items() if isinstance(values, dict)
    )


def short_number(text: str) -> str:
    """A CSV number cut to 4 significant digits (history.csv holds float32 noise such as 0.30000001192)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if not value.is_integer() or "." in text else text


def float_or_none(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def size_text(size: Any) -> str:
    if not isinstance(size, (int, float)):
        return MISSING
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
