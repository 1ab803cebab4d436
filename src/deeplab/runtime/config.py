"""Where the Hydra configs are, and composing them in-process (tests, notebooks, tools) exactly as
the apps do."""

import json
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from deeplab.runtime.errors import UserError


def _conf_dir() -> Path:
    """The checkout's `conf/` (src layout, editable install), else the copy a regular
    `pip install` places inside the package (`deeplab/conf`, pyproject.toml)."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parents[1] / "conf"
    return checkout if (checkout / "train.yaml").is_file() else package / "conf"


CONF_DIR = _conf_dir()


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """`compose("train", ["debug=smoke", "data=synthetic"])` == what `src/train.py ...` sees."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def hydra_value(value) -> str:
    """A value as it is typed on the command line (`[6,12]`, `true`, `null`)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def override_key(override: str) -> str:
    """The key a command-line override sets (`++data.root=x` -> `data.root`, `~model.x` -> ...)."""
    return override.split("=", 1)[0].lstrip("+~")


def instantiate(node, **kwargs):
    """`hydra.utils.instantiate`, with a component's own UserError passed on as it was raised
    (Hydra wraps every error of a `_target_` in an InstantiationException and its repr)."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def group_option_names(group: str) -> set[str]:
    """The option names of a config group (`model` -> {"largefov", "aspp_l", ...})."""
    return {p.stem for p in (CONF_DIR / group).glob("*.yaml")}


def group_options(group: str) -> dict[str, dict]:
    """Each option of a config group as it sets its own keys (unresolved): the file, on top of
    the bases it includes `@_here_` from its own group (conf/model/base/deeplab.yaml); group
    switches in its defaults list (`override /backbone...`) are not followed."""
    options = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        own = OmegaConf.load(path)
        merged = OmegaConf.create()
        for entry in own.get("defaults", []):
            if isinstance(entry, str) and entry.endswith("@_here_"):
                name = entry.removesuffix("@_here_")  # `/x/y`: from conf/, else from the group
                where = CONF_DIR / name[1:] if name.startswith("/") else CONF_DIR / group / name
                merged = OmegaConf.merge(merged, OmegaConf.load(f"{where}.yaml"))
        cfg = OmegaConf.to_container(OmegaConf.merge(merged, own), resolve=False)
        cfg.pop("defaults", None)
        options[path.stem] = cfg
    return options
