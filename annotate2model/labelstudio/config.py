"""Reading a project's labeling config through the SDK's LabelInterface."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from annotate2model.errors import LabelStudioError


@dataclass(frozen=True)
class LabelingConfig:
    """What sync and collect need from a config: one Image, one single-choice Choices on it."""

    # The task data key that holds the image URL (`$image` in the config gives "image").
    image_field: str
    # Names used in annotation results: from_name is the Choices control, to_name the Image.
    from_name: str
    to_name: str
    labels: tuple[str, ...]


def parse_label_config(xml: str, project_id: int | None = None) -> LabelingConfig:
    """Image field and label set of a config; LabelStudioError when it cannot classify images."""
    from label_studio_sdk.label_interface.interface import LabelInterface

    where = f"project {project_id}'s labeling config" if project_id else "the labeling config"
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises assorted parse errors
        raise LabelStudioError(f"{where} cannot be parsed: {exc}.") from None
    images = [o for o in interface.objects if o.tag == "Image"]
    choices = [
        c
        for c in interface.controls
        if c.tag == "Choices" and any(t in c.to_name for t in [o.name for o in images])
    ]
    if not images or not choices:
        raise LabelStudioError(
            f"{where} needs an <Image> and a <Choices> control on it (image classification); "
            f"it has {', '.join(sorted({c.tag for c in interface.controls})) or 'no controls'}."
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
    image = next(o for o in images if o.name in control.to_name)
    value = str(image.value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelStudioError(f'{where}: the Image "{image.name}" has no $field value.')
    labels = tuple(str(label) for label in control.labels)
    if not labels:
        raise LabelStudioError(f'{where}: the Choices "{control.name}" lists no choices.')
    return LabelingConfig(
        image_field=value[1:], from_name=control.name, to_name=image.name, labels=labels
    )


def build_label_config(labels: list[str]) -> str:
    """The config a new project gets (`connect` creating one): an image and single choices."""
    cleaned = [label.strip() for label in labels if label.strip()]
    if not cleaned:
        raise LabelStudioError("a new project needs at least one label, e.g. cat,dog.")
    if len(set(cleaned)) != len(cleaned):
        raise LabelStudioError("the labels list a label twice.")
    choices = "\n    ".join(f"<Choice value={quoteattr(label)}/>" for label in cleaned)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInLine="true">\n'
        f"    {choices}\n  </Choices>\n</View>"
    )
