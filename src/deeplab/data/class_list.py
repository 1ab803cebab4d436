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


# Masks hold class indices in 8 bits with 255 for void (losses, metrics, palette PNGs): classes
# 0..254. A wider set would need 16-bit masks end to end; it is refused by name instead.
MAX_CLASSES = 255


class FolderError(UserError, InterpolationResolutionError):
    """A UserError that OmegaConf passes through unwrapped when `classes.txt` is read while
    resolving `data.num_classes` (it wraps any other exception type in its own). OmegaConf
    rebuilds it with two lines of its own (`full_key: ...`, `object_type=...`) appended: only
    the first line, the project's message, is kept."""

    def __init__(self, message: str = "", *args):
        super().__init__(message, *args)
        self.args = (str(message).split("\n")[0],)  # OmegaConf's base leaves `args` as given


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


def numbered_lines(path: Path, what: str, fix: str, comments: bool) -> list[tuple[int, str]]:
    """(line number in the file, text) of each non-empty line of a text file written by any
    tool (BOM, CRLF, tabs), surrounding whitespace removed; `comments`: lines starting with `#`
    are skipped too (classes.txt; split lists have no comments: an id may start with `#`)."""

    def read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise UserError(
                f"{what} {p} is not UTF-8 text (byte {err.start}): save it as UTF-8"
            ) from None

    text = read_file(read, path, what, fix)
    lines = ((n, line.strip()) for n, line in enumerate(text.splitlines(), 1))
    return [(n, s) for n, s in lines if s and not (comments and s.startswith("#"))]


def read_lines(path: Path, what: str, fix: str) -> list[str]:
    """The ids of a split list, exactly as written one per line (no comment syntax)."""
    return [line for _, line in numbered_lines(path, what, fix, comments=False)]


def _number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_colour(words: list[str], where: str) -> tuple[int, int, int] | None:
    """The `R G B` that ends a line, None when the line gives none; FolderError for numbers
    that are no 0-255 colour (`cat 1.5 2 3`, `cat 300 0 0`)."""
    if len(words) < 3 or not all(_number(w) for w in words[-3:]):
        return None
    if not all(w.isdigit() and int(w) <= 255 for w in words[-3:]):
        raise FolderError(f"{where}: colour {' '.join(words[-3:])} must be three 0-255 integers")
    return tuple(int(w) for w in words[-3:])


def read_classes(root: str | Path) -> ClassList:
    """Parse `root/classes.txt`, or a FolderError naming the line and the fix."""
    path = Path(root) / "classes.txt"
    fix = "write one class name per line in index order (0 first), optionally followed by R G B"
    if not Path(root).is_dir():
        raise FolderError(f"data.root={root} is not a folder: point data.root at your data set")
    if not path.exists():
        raise FolderError(f"{path} is missing: {fix}")
    try:
        lines = numbered_lines(path, "class list", fix, comments=True)
    except UserError as err:  # a directory, not UTF-8, unreadable: as the resolver's message
        raise FolderError(str(err)) from None
    result = ClassList([])
    for number, line in lines:
        where = f"{path} line {number}"
        words = line.split()
        colour = parse_colour(words, where)
        name = " ".join(words[:-3]) if colour else line
        if not name:
            raise FolderError(f"{where}: the colour has no class name: {fix}")
        if name.lower() == IGNORE_NAME:
            if colour is None:
                raise FolderError(f"{where}: give the void colour, `ignore R G B`")
            result.ignore_colour = colour
            continue
        if name in result.names:
            raise FolderError(f"{where}: class {name!r} is listed twice")
        result.names.append(name)
        result.colours.append(colour)
    if not result.names:
        raise FolderError(f"{path} lists no class: {fix}")
    if len(result.names) == 1:
        raise FolderError(
            f"{path} lists one class ({result.names[0]!r}): segmentation needs two or more; "
            "add the background (or whatever the other pixels are) as class 0"
        )
    if len(result.names) > MAX_CLASSES:
        raise FolderError(
            f"{path} lists {len(result.names)} classes; masks here hold at most {MAX_CLASSES} "
            f"(0..{MAX_CLASSES - 1}, 255 marks void): merge classes to {MAX_CLASSES} or fewer"
        )
    given = [c for c in [*result.colours, result.ignore_colour] if c is not None]
    if len(set(given)) < len(given):
        raise FolderError(f"{path}: two lines share a colour; every class needs its own")
    return result


def class_count(root: str) -> int:
    """The `deeplab_folder_classes` resolver: how many classes DIR/classes.txt lists."""
    return len(read_classes(root).names)


if not OmegaConf.has_resolver("deeplab_folder_classes"):
    OmegaConf.register_new_resolver("deeplab_folder_classes", class_count)
