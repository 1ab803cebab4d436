"""`classes.txt` of a folder data set (docs/own-data.md): one class per line in index order,
`name` or `name R G B`, a line `ignore R G B` for the void colour. Registers the
`deeplab_folder_classes` resolver that gives `data.num_classes` its value from the file; kept
light (no image or augmentation library) because importing deeplab.data registers it."""

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_file

IGNORE_NAME = "ignore"


class FolderError(UserError, InterpolationResolutionError):
    """A UserError that OmegaConf passes through unwrapped when `classes.txt` is read while
    resolving `data.num_classes` (it wraps any other exception type in its own)."""


@dataclass
class ClassList:
    """classes.txt: names in index order, their colours (None where a line gives none), and
    the void colour of an `ignore` line."""

    names: list[str]
    colours: list[tuple[int, int, int] | None] = field(default_factory=list)
    ignore_colour: tuple[int, int, int] | None = None

    @property
    def has_colours(self) -> bool:
        return any(c is not None for c in self.colours)


def read_lines(path: Path, what: str, fix: str) -> list[str]:
    """Non-empty, non-comment lines of a text file written by any tool (BOM, CRLF, tabs)."""
    text = read_file(lambda p: p.read_text(encoding="utf-8-sig"), path, what, fix)
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def parse_colour(words: list[str]) -> tuple[int, int, int] | None:
    if len(words) < 4 or not all(w.lstrip("-").isdigit() for w in words[-3:]):
        return None
    return tuple(int(w) for w in words[-3:])


def read_classes(root: str | Path) -> ClassList:
    """Parse `root/classes.txt`, or a FolderError naming the line and the fix."""
    path = Path(root) / "classes.txt"
    fix = "write one class name per line in index order (0 first), optionally followed by R G B"
    if not Path(root).is_dir():
        raise FolderError(f"data.root={root} is not a folder: point data.root at your data set")
    if not path.is_file():
        raise FolderError(f"{path} is missing: {fix}")
    result = ClassList([])
    for number, line in enumerate(read_lines(path, "class list", fix), 1):
        words = line.split()
        colour = parse_colour(words)
        name = " ".join(words[:-3]) if colour else line
        if colour and not all(0 <= c <= 255 for c in colour):
            raise FolderError(f"{path} line {number}: colour {colour} must be three 0-255 values")
        if name.lower() == IGNORE_NAME:
            if colour is None:
                raise FolderError(f"{path} line {number}: give the void colour, `ignore R G B`")
            result.ignore_colour = colour
            continue
        if name in result.names:
            raise FolderError(f"{path} line {number}: class {name!r} is listed twice")
        result.names.append(name)
        result.colours.append(colour)
    if not result.names:
        raise FolderError(f"{path} lists no class: {fix}")
    given = [c for c in [*result.colours, result.ignore_colour] if c is not None]
    if len(set(given)) < len(given):
        raise FolderError(f"{path}: two lines share a colour; every class needs its own")
    return result


def class_count(root: str) -> int:
    """The `deeplab_folder_classes` resolver: how many classes DIR/classes.txt lists."""
    return len(read_classes(root).names)


if not OmegaConf.has_resolver("deeplab_folder_classes"):
    OmegaConf.register_new_resolver("deeplab_folder_classes", class_count)
