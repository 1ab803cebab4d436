"""The GPU report's frame (experiments/gpu_report.py): run profiles, time caps, the markdown
report rewritten as rows come, and `Run`, what every stage gets (device, configs, timers)."""

import contextlib
import dataclasses
import functools
import gc
import signal
from pathlib import Path

import bench_crf
import timing
import torch
from omegaconf import OmegaConf

from deeplab.runtime.config import compose

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes, repeats and stage caps of a run: FULL is the paper's, TINY the CPU dry run."""

    crf_sizes: dict  # name -> (height, width, labels)
    crf_references: dict  # name -> images pydensecrf refines (~1 s VOC, ~12 s Cityscapes each)
    width_mult: float
    crop: int
    batch: int
    eval_size: int
    warmup: int
    steps: int
    crf_steps: int  # a Cityscapes batch of 8 may take seconds per call on today's torch CRF
    caps: dict  # stage -> seconds
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


FULL = Profile(
    crf_sizes={"VOC": bench_crf.SIZES["voc"], "Cityscapes": bench_crf.SIZES["cityscapes"]},
    crf_references={"VOC": 2, "Cityscapes": 1},
    width_mult=1.0,
    crop=321,
    batch=10,
    eval_size=513,
    warmup=2,
    steps=5,
    crf_steps=3,
    caps={"crf": 100, "train": 120, "compile": 150, "eval": 60},
)


TINY = Profile(
    crf_sizes={"VOC": (30, 40, 21), "Cityscapes": (32, 64, 19)},
    crf_references={"VOC": 2, "Cityscapes": 1},
    width_mult=0.0625,
    crop=41,
    batch=2,
    eval_size=41,
    warmup=0,
    steps=1,
    crf_steps=1,
    # torch.compile on a CPU takes minutes: the dry run records it stopped at its cap
    caps={"crf": 60, "train": 60, "compile": 10, "eval": 60},
    threads=1,  # tiny ops: threads only add overhead (5-10x slower on a loaded 2-core machine)
)


class OutOfTime(BaseException):
    """A stage passed its cap. A BaseException, so that library code's `except Exception` (as in
    torch.compile) cannot swallow it."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise OutOfTime in the main thread after `seconds` (SIGALRM; at the next Python bytecode,
    so one long C++ call, e.g. pydensecrf on a Cityscapes image, finishes first)."""

    def on_alarm(signum, frame):
        raise OutOfTime(f"stopped at its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class Section:
    title: str
    intro: str
    columns: list[str]
    rows: list[dict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


class Report:
    """The markdown report, rewritten to `path` after every change so that a killed run leaves
    it; every row and note is printed too, as it comes."""

    def __init__(self, path: Path, header: list[str], sections: dict[str, Section], caps: dict):
        self.path, self.header, self.sections = path, header, sections
        self.stages = {
            s: {"cap s": f"{caps[s]:.0f}", "took s": "-", "status": "pending"} for s in caps
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, key: str, row: dict) -> dict:
        self.sections[key].rows.append(row)
        self.show(key, row)
        return row

    def show(self, key: str, row: dict) -> None:
        """Print a new or updated row and rewrite the file."""
        print(f"[{key}] " + " | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
        self.write()

    def note(self, key: str, text: str) -> None:
        self.sections[key].notes.append(text)
        print(f"[{key}] {text}", flush=True)
        self.write()

    def stage(self, name: str, took_s: float | None, status: str) -> None:
        self.stages[name].update({"took s": "-" if took_s is None else f"{took_s:.0f}"})
        self.stages[name]["status"] = status
        print(f"== stage {name}: {status}", flush=True)
        self.write()

    def attempt(self, key: str, what: str, fn):
        """fn(), or None with the error noted: one failed row must not lose the stage's others."""
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - any failure of one row is reported, not fatal
            self.note(key, f"{what}: failed: {one_line(error)}")
            free_memory()
            return None

    def render(self) -> str:
        lines = [
            *self.header,
            "",
            "## Stages",
            "",
            *_table(
                ["stage", "cap s", "took s", "status"],
                [{"stage": s, **v} for s, v in self.stages.items()],
            ),
        ]
        for section in self.sections.values():
            lines += ["", f"## {section.title}", "", section.intro, ""]
            lines += _table(section.columns, section.rows) if section.rows else ["(no rows)"]
            lines += [""] + [f"- {note}" for note in section.notes] if section.notes else []
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.path.write_text(self.render())


def _table(columns: list[str], rows: list[dict]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return out + ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def free_memory() -> None:
    """Collect reference cycles and return cached CUDA blocks (after a failed row, a stage)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class Run:
    """What every stage needs: the device, the profile, the report and the composed overrides."""

    device: torch.device
    profile: Profile
    report: Report

    def config(self, name: str, overrides: list[str]):
        """conf/<name>.yaml with these overrides and this run's width, crop and batch.

        Group choices (`model=aspp_l`) go through Hydra's compose, once per set of choices
        (a composition takes ~0.3 s); values (`model.msc=true`) are merged onto a copy, which
        refuses unknown keys as compose does (the composed config is in struct mode)."""
        p = self.profile
        values = [f"model.width_mult={p.width_mult}", f"data.crop_size={p.crop}"]
        values += [f"data.batch_size={p.batch}"]
        groups = ["trainer=gpu"] if self.device.type == "cuda" else []
        for override in overrides:
            (values if "." in override.split("=")[0] else groups).append(override)
        return OmegaConf.merge(_compose(name, tuple(groups)), OmegaConf.from_dotlist(values))

    def timed(self, fn) -> float:
        """Median wall seconds of fn() after the warm-up calls (syncs CUDA)."""
        return timing.median_seconds(fn, self.device, self.profile.warmup, self.profile.steps)[0]

    def reset_peak(self) -> None:
        """Before a row's timed calls. On CUDA also collect what earlier rows left in cycles,
        so that it does not count in this row's peak (on CPU, where the peak is the RSS and a
        collection costs up to a second on a busy machine, nothing)."""
        if self.device.type == "cuda":
            free_memory()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> str:
        """GPU: torch.cuda.max_memory_allocated since reset_peak; CPU: the process's peak RSS."""
        return f"{timing.peak_bytes(self.device) / 2**20:.0f}"


@functools.cache
def _compose(name: str, groups: tuple[str, ...]):
    return compose(name, list(groups))


def refine_batch(crf, images: list, maps: list, kind: str = "probs") -> list:
    """The CRF's batched entry point: one place to change if deeplab.crf renames it."""
    return crf.refine_batch(images, maps, kind)
