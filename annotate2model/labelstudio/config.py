"""Reading a project's labeling config: the image field, the Choices control and its labels.

Configs are read and written with the SDK's `LabelInterface`, Label Studio's own reading of
them; what is ours is the rule for an image classifier: one Image, one single-choice Choices on
it. The SDK is imported by the functions that need it, not when this module loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from annotate2model.errors import LabelStudioError
from annotate2model.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from label_studio_sdk.label_interface.interface import LabelInterface


@dataclass(frozen=True)
class LabelingConfig:
    """What sync and collect need from a config: one Image, one single-choice Choices on it."""

    # The task data key that holds the image URL (`$image` in the config gives "image").
    image_field: str
    # Names used in annotation results: from_name is the Choices control, to_name the Image.
    from_name: str
    to_name: str
    labels: tuple[str, ...]


def parse_label_config(
    xml: str, project_id: int | None = None, memo: Path | None = None
) -> LabelingConfig:
    """Image field and label set of a config; LabelStudioError when it cannot classify images.

    `memo`: a folder where what the SDK read of each config is kept by the config's SHA-256, so
    that a sync of an unchanged project does not import the SDK again (about 1 s of a no-change
    sync's 2 s, docs/scaling.md); a config that cannot classify is read again every time."""
    path = memo / f"{hashlib.sha256(xml.encode()).hexdigest()}.json" if memo else None
    if path is not None:
        try:
            known = json.loads(path.read_text())
            return LabelingConfig(**{**known, "labels": tuple(known["labels"])})
        except (OSError, ValueError, TypeError, KeyError):
            pass  # not read yet (or an unreadable file): the SDK reads it below
    config = _parse(xml, project_id)
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only cache folder costs only the speed-up
            atomic_write_bytes(path, json.dumps(dataclasses.asdict(config)).encode(), mode=0o644)
    return config


def _parse(xml: str, project_id: int | None) -> LabelingConfig:
    from label_studio_sdk._legacy.exceptions import LabelStudioXMLSyntaxErrorSentryIgnored
    from label_studio_sdk.label_interface.interface import LabelInterface

    where = f"project {project_id}'s labeling config" if project_id else "the labeling config"
    try:
        interface = LabelInterface(xml)
    # The SDK's one error for a config that is not XML; it exports no public name for it.
    except LabelStudioXMLSyntaxErrorSentryIgnored as exc:
        raise LabelStudioError(f"{where} cannot be parsed: {exc}.") from None
    return _classifier_config(interface, where)


def _classifier_config(interface: LabelInterface, where: str) -> LabelingConfig:
    """The one Image and its one single-choice Choices of a `LabelInterface`, or why it has none."""
    controls = list(interface.controls or ())
    images = {o.name: o for o in interface.objects or () if o.tag == "Image"}
    choices = [c for c in controls if c.tag == "Choices" and images.keys() & set(c.to_name)]
    if not images or not choices:
        tags = sorted({c.tag for c in controls})
        raise LabelStudioError(
            f"{where} needs an <Image> and a <Choices> control on it (image classification); "
            f"it has {', '.join(tags) or 'no controls'}."
        )
    if len(choices) > 1:
        names = ", ".join(c.name for c in choices)
        raise LabelStudioError(f"{where} has several Choices controls ({names}); keep one.")
    control = choices[0]
    if str(control.attr.get("choice", "single")).lower() not in ("single", "single-radio"):
        raise LabelStudioError(
            f'{where} lets annotators pick several choices in "{control.name}"; '
            'a classifier needs choice="single".'
        )
    image = next(o for name, o in images.items() if name in control.to_name)
    if not image.value_is_variable:
        raise LabelStudioError(f'{where}: the Image "{image.name}" has no $field value.')
    labels = tuple(str(label) for label in control.labels)
    if not labels:
        raise LabelStudioError(f'{where}: the Choices "{control.name}" lists no choices.')
    return LabelingConfig(
        image_field=image.value_name, from_name=control.name, to_name=image.name, labels=labels
    )


def build_label_config(labels: list[str]) -> str:
    """The config a new project gets (`connect` creating one): an image and single choices."""
    from label_studio_sdk.label_interface.create import choices
    from label_studio_sdk.label_interface.interface import LabelInterface

    cleaned = [label.strip() for label in labels if label.strip()]
    if not cleaned:
        raise LabelStudioError("a new project needs at least one label, e.g. cat,dog.")
    if len(set(cleaned)) != len(cleaned):
        raise LabelStudioError("the labels list a label twice.")
    tags = {"image": "Image", "label": choices(cleaned, choice="single", showInLine="true")}
    return str(LabelInterface.create(tags))
