"""One typed settings object, built once at the CLI boundary.

Precedence: command-line flags > environment variables > a2m.toml > defaults. Code below `cli/`
receives a `Settings` and never reads the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from annotate2model.errors import SettingsError
from annotate2model.workspace import Workspace

SPLITS = ("train", "val", "test")

# Decompression-bomb guard: twice Pillow's default PIL.Image.MAX_IMAGE_PIXELS, where Pillow itself
# refuses an image, so by default ours and Pillow's agree.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SplitFractions:
    """Share of images that go to each split; they must add up to 1."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if any(v < 0 or v > 1 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise SettingsError(
                f"split fractions must be between 0 and 1 and add up to 1, got "
                f"train={self.train} val={self.val} test={self.test}."
            )

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class LabelStudioSettings:
    """Where the Label Studio project lives and how to authenticate (token kept as a Secret)."""

    url: str | None = None
    project_id: int | None = None
    token: Secret | None = None


@dataclass(frozen=True)
class Settings:
    workspace: Workspace
    # SQLAlchemy URL of the store; SQLite inside the workspace unless set.
    database_url: str
    # How images are assigned to train/val/test.
    split: SplitFractions = field(default_factory=SplitFractions)
    # Decompression-bomb guard: images with more pixels are refused (imaging.py applies it to each
    # image it opens; Pillow's own process-wide guard applies too).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    labelstudio: LabelStudioSettings = field(default_factory=LabelStudioSettings)
    # Torch device for training: "auto" picks CUDA, then MPS, then CPU.
    device: str = "auto"
    # Hosts ("name" or "name:port") whose http(s) image URLs `a2m serve` may fetch for a Label
    # Studio task; none: only the connected Label Studio's own media.
    serve_image_hosts: tuple[str, ...] = ()
    # MLflow tracking URI: every succeeded run is mirrored there (tracking.py); None: not at all.
    # `--track mlflow` (override "track") turns it on where nothing names one: MLflow's own
    # default store, in the workspace folder; `--track none` turns it off.
    mlflow_uri: str | None = None
    # The MLflow experiment a2m's runs go to (default: the workspace folder's name).
    mlflow_experiment: str = ""


def load_settings(
    workspace: Workspace,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge flags (`overrides`), environment, a2m.toml and defaults into one Settings."""
    overrides = dict(overrides or {})
    config = workspace.read_config()

    def pick(flag: str, env_name: str, section: str, key: str) -> Any:
        if overrides.get(flag) is not None:
            return overrides[flag]
        if env.get(env_name):
            return env[env_name]
        value = config.get(section, {}).get(key)
        return value if value not in ("", None) else None

    database_url = pick("database_url", "A2M_DATABASE_URL", "store", "database_url")
    if database_url is None:
        database_url = f"sqlite:///{workspace.store_path}"

    split_cfg = config.get("split", {})
    try:
        split = SplitFractions(
            train=float(split_cfg.get("train", 0.8)),
            val=float(split_cfg.get("val", 0.1)),
            test=float(split_cfg.get("test", 0.1)),
        )
    except (TypeError, ValueError):
        raise SettingsError(f"[split] in {workspace.config_path} must hold numbers.") from None

    max_pixels_raw = pick("max_image_pixels", "A2M_MAX_IMAGE_PIXELS", "images", "max_pixels")
    max_pixels = _as_int(max_pixels_raw, "max_pixels", DEFAULT_MAX_IMAGE_PIXELS)

    secrets = workspace.read_secrets()
    ls_url = pick("labelstudio_url", "LABEL_STUDIO_URL", "labelstudio", "url")
    ls_project = pick("labelstudio_project", "A2M_LABEL_STUDIO_PROJECT", "labelstudio", "project")
    token = overrides.get("labelstudio_token") or env.get("LABEL_STUDIO_API_KEY")
    if not token:
        token = secrets.get("labelstudio_token")
    labelstudio = LabelStudioSettings(
        url=str(ls_url).rstrip("/") if ls_url else None,
        project_id=_as_int(ls_project, "Label Studio project", None),
        token=Secret(str(token)) if token else None,
    )
    device = str(pick("device", "A2M_DEVICE", "training", "device") or "auto")
    hosts = pick("serve_image_hosts", "A2M_SERVE_IMAGE_HOSTS", "serve", "image_hosts")
    mlflow_uri = _mlflow_uri(
        overrides.get("track"),
        pick("mlflow_uri", "MLFLOW_TRACKING_URI", "tracking", "mlflow_uri"),
        workspace,
    )
    experiment = pick("mlflow_experiment", "MLFLOW_EXPERIMENT_NAME", "tracking", "experiment")
    return Settings(
        workspace=workspace,
        database_url=str(database_url),
        split=split,
        max_image_pixels=max_pixels or DEFAULT_MAX_IMAGE_PIXELS,
        labelstudio=labelstudio,
        device=device,
        serve_image_hosts=_host_list(hosts),
        mlflow_uri=mlflow_uri,
        mlflow_experiment=str(experiment or workspace.root.name or "a2m"),
    )


# What `--track` may ask of one command: mirror runs to MLflow, or not.
TRACK_CHOICES = ("mlflow", "none")


def _mlflow_uri(track: str | None, configured: Any, workspace: Workspace) -> str | None:
    """The tracking URI runs are mirrored to: the configured one, unless `track` says otherwise
    ("none": no mirroring; "mlflow": mirroring, to MLflow's default store in the workspace folder
    where nothing is configured)."""
    if track is not None and track not in TRACK_CHOICES:
        raise SettingsError(f"track must be one of {', '.join(TRACK_CHOICES)}, got {track!r}.")
    if track == "none":
        return None
    uri = str(configured) if configured else None
    if track == "mlflow":
        from annotate2model import tracking

        tracking.require_installed()
        return uri or tracking.default_uri(workspace.root)
    return uri


def _as_int(value: Any, name: str, default: int | None) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a whole number, got {value!r}.") from None


def _host_list(value: Any) -> tuple[str, ...]:
    """Host names from a TOML list or a string separated by commas or spaces, lower-cased."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    return tuple(str(item).strip().lower() for item in items if str(item).strip())
