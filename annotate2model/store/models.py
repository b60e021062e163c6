"""The store's tables as SQLAlchemy 2.0 typed models.

The schema is created and changed only by Alembic migrations in the top-level `migrations/` folder;
a test checks that these models and the migrations have not drifted apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware (SQLite stores it without the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Image(Base):
    """An image's bytes live once in blobs/ under their SHA-256; this row describes them."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # Where the bytes first came from (a path or URL), for messages only.
    origin: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Task(Base):
    """One Label Studio task (project id, task id) and the image it points at."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "task_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer)
    # Null until the image was read; stays null when it cannot be (see `problem`).
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"), index=True)
    # The task's data.image value as Label Studio holds it (a URL of one of four kinds).
    image_url: Mapped[str | None] = mapped_column(Text)
    # Label Studio's updated_at of the task at the last sync (ISO 8601 text, as Label Studio gives).
    remote_updated_at: Mapped[str | None] = mapped_column(String(40))
    # The label the sync policy resolved for this task, null when unlabeled.
    label: Mapped[str | None] = mapped_column(String(200))
    # Why the task gives no usable row (image unreadable, label outside the config, conflict...).
    problem: Mapped[str | None] = mapped_column(Text)
    # Set when the task disappeared from Label Studio; the row is kept for history.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Annotation(Base):
    """Raw annotation history: one row per annotation revision seen in Label Studio."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("project_id", "annotation_id", "remote_updated_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    annotation_id: Mapped[int] = mapped_column(Integer)
    task_row_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    # The chosen label, null for an empty or cancelled result.
    label: Mapped[str | None] = mapped_column(String(200))
    # The annotation's `result` list as JSON text, kept verbatim.
    result_json: Mapped[str] = mapped_column(Text)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_by: Mapped[int | None] = mapped_column(Integer)
    remote_created_at: Mapped[str | None] = mapped_column(String(40))
    remote_updated_at: Mapped[str] = mapped_column(String(40))
    # Set when the annotation no longer exists in Label Studio.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SyncState(Base):
    """Per Label Studio project: how far the incremental sync has read."""

    __tablename__ = "sync_state"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The largest task updated_at already stored; the next sync asks for tasks newer than it.
    watermark: Mapped[str | None] = mapped_column(String(40))
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_version: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.number"))
    # Label set of the project's labeling config at the last sync, as JSON text.
    labels_json: Mapped[str | None] = mapped_column(Text)


class DatasetVersion(Base):
    """An immutable, numbered snapshot of (image, label, split) rows."""

    __tablename__ = "dataset_versions"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.number"))
    # SHA-256 over the sorted rows: equal hashes mean equal content.
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(Text, default="")
    # What made it: "import-folder", "sync", ...
    source: Mapped[str] = mapped_column(String(40))
    item_count: Mapped[int] = mapped_column(Integer)
    # The split fractions in force when it was made, as JSON text.
    split_json: Mapped[str] = mapped_column(Text)


class VersionItem(Base):
    """One row of a dataset version."""

    __tablename__ = "version_items"
    __table_args__ = (Index("ix_version_items_version_split", "version", "split"),)

    version: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.number", ondelete="CASCADE"), primary_key=True
    )
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(8))


class Run(Base):
    """One training (or ensemble) of one configuration on one dataset version."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("dataset_versions.number"), index=True)
    # "train" or "ensemble".
    kind: Mapped[str] = mapped_column(String(16))
    # running / succeeded / failed / interrupted.
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The full run configuration as JSON text.
    config_json: Mapped[str] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    images_per_second: Mapped[float | None] = mapped_column(Float)
    # Per-epoch rows (losses, accuracies, lr, seconds) as JSON text.
    history_json: Mapped[str] = mapped_column(Text, default="[]")
    # Final metrics as JSON text.
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    # Why it failed or was interrupted.
    error: Mapped[str | None] = mapped_column(Text)
    # Folder under .a2m/runs/ holding weights and the model card, relative to the workspace.
    artifact_dir: Mapped[str | None] = mapped_column(Text)
    # The training process while status is running, to tell a dead run: its id, the host it runs
    # on and the operating system's start time of that process (a reused pid starts later).
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    process_started: Mapped[float | None] = mapped_column(Float)


class Prediction(Base):
    """A run's prediction for one image of one version (training's own or a later evaluation)."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_run_id_version_split", "run_id", "version", "split"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("dataset_versions.number"), primary_key=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(200))
    predicted: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    # Probabilities in label-map order as JSON text.
    probs_json: Mapped[str] = mapped_column(Text)


class Flag(Base):
    """A task sent back to Label Studio for review, and what became of it."""

    __tablename__ = "flags"
    # One flag per task per run: flagging a run again updates its flags instead of adding any.
    __table_args__ = (UniqueConstraint("run_id", "task_row_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    task_row_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    # misclassified / label-issue / uncertain.
    reason: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    current_label: Mapped[str | None] = mapped_column(String(200))
    suggested_label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # relabeled / confirmed / labeled (an uncertain task got its first label) / withdrawn.
    resolution: Mapped[str | None] = mapped_column(String(32))
    # The task's annotation revisions when it was flagged, as JSON [[annotation id, updated_at]]:
    # any other (not skipped) answer seen later means someone looked at the task again.
    answers_json: Mapped[str | None] = mapped_column(Text)
    # The task data key that holds the review note in Label Studio.
    review_field: Mapped[str | None] = mapped_column(String(64))
    # The Data Manager tab (view) listing the run's flagged tasks.
    view_id: Mapped[int | None] = mapped_column(Integer)
    # Requeued: the annotation turned into a draft, and that draft.
    requeued_annotation_id: Mapped[int | None] = mapped_column(Integer)
    draft_id: Mapped[int | None] = mapped_column(Integer)


class Evaluation(Base):
    """A run judged on a set of images (`a2m evaluate`, `a2m compare`), kept for the ledger."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    # The version whose images were judged.
    version: Mapped[int] = mapped_column(ForeignKey("dataset_versions.number"))
    # train / val / test, or "common" for a comparison's shared test images.
    split: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)
    # SHA-256 over the sorted image hashes judged: equal hashes, the same images.
    images_hash: Mapped[str] = mapped_column(String(64))
    accuracy: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float | None] = mapped_column(Float)
    # The whole SplitMetrics as JSON text.
    metrics_json: Mapped[str] = mapped_column(Text)
    # What judged it: "evaluate" or "compare".
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Curve(Base):
    """A learning curve of one version: accuracy on fixed test images against training size."""

    __tablename__ = "curves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("dataset_versions.number"), index=True)
    # The run configuration trained at every point, as JSON text.
    config_json: Mapped[str] = mapped_column(Text)
    test_n: Mapped[int] = mapped_column(Integer)
    images_hash: Mapped[str] = mapped_column(String(64))
    # One object per (fraction, repeat): train count, accuracy, macro F1, as JSON text.
    points_json: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Promotion(Base):
    """What `a2m serve --auto-train` decided for a version it trained by itself."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("dataset_versions.number"), index=True)
    # The run trained (None: the training failed before a run was recorded).
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    # The run that was served when it was judged.
    served_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    promoted: Mapped[bool] = mapped_column(Boolean)
    # "not worse than run 3 on 45 images neither trained on: ..." or why it was not served.
    reason: Mapped[str] = mapped_column(Text)
    # The judging's figures (accuracies, intervals, McNemar) as JSON text.
    details_json: Mapped[str] = mapped_column(Text, default="{}")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())
