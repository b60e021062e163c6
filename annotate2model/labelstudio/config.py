"""Reading a project's labeling config: the image field, the Choices control and its labels.

The config is read with the standard library by the rules of the SDK's `LabelInterface`
(label-studio-sdk 2.1): a control is any tag with `name` and `toName` (`Filter` excepted), an
object any other tag with `name` and `value` (or `valueList`), a label any `Choice`, `Label` or
`Relation` with a `value` (or `alias`) below a control. tests/test_label_config.py checks the
result against `LabelInterface` itself, config by config. Importing the SDK to read four fields
would cost most of a second on every `a2m sync` (it loads pydantic and its whole API client).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from annotate2model.errors import LabelStudioError

_LABEL_TAGS = frozenset({"Label", "Choice", "Relation"})
_NOT_CONTROL_TAGS = frozenset({"Filter"})
# Tags that are their own control and object (from_name == to_name), as the SDK pairs them.
_SELF_REFERENCING_TAGS = frozenset({"chat", "reactcode"})


@dataclass(frozen=True)
class LabelingConfig:
    """What sync and collect need from a config: one Image, one single-choice Choices on it."""

    # The task data key that holds the image URL (`$image` in the config gives "image").
    image_field: str
    # Names used in annotation results: from_name is the Choices control, to_name the Image.
    from_name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass
class _Tag:
    tag: str
    name: str
    attr: dict[str, str]
    # Controls: the object names they apply to. Objects: their `value` (e.g. "$image").
    to_name: list[str] = field(default_factory=list)
    value: str | None = None


@dataclass
class _Interface:
    """Controls, objects and labels (per control name, in order, each once) by the SDK's rules."""

    controls: dict[str, _Tag]
    objects: dict[str, _Tag]
    labels: dict[str, dict[str, None]]

    @classmethod
    def parse(cls, xml: str) -> _Interface:
        root = ElementTree.fromstring(xml)
        parents = {child: parent for parent in root.iter() for child in parent}
        controls: dict[str, _Tag] = {}
        objects: dict[str, _Tag] = {}
        labels: dict[str, dict[str, None]] = {}
        for node in root.iter():
            attr, name = node.attrib, node.attrib.get("name")
            if name and attr.get("toName") and node.tag not in _NOT_CONTROL_TAGS:
                controls[name] = _Tag(node.tag, name, dict(attr), to_name=attr["toName"].split(","))
            elif name and (
                attr.get("value")
                or attr.get("valueList")
                or node.tag.lower() in _SELF_REFERENCING_TAGS
            ):
                objects[name] = _Tag(node.tag, name, dict(attr), value=_object_value(attr))
            elif node.tag in _LABEL_TAGS:
                # The nearest enclosing tag named like a control seen so far owns the label.
                parent = parents.get(node)
                while parent is not None and parent.attrib.get("name") not in controls:
                    parent = parents.get(parent)
                value = attr.get("alias") or attr.get("value")
                if parent is not None and value is not None:
                    labels.setdefault(parent.attrib["name"], {})[value] = None
        for name, tag in {**objects, **controls}.items():
            if tag.tag.lower() in _SELF_REFERENCING_TAGS:
                controls.setdefault(
                    name, _Tag(tag.tag, name, {"name": name, "toName": name}, to_name=[name])
                )
                objects.setdefault(
                    name, _Tag(tag.tag, name, tag.attr, value=_object_value(tag.attr))
                )
        return cls(controls, objects, labels)


def _object_value(attr: dict[str, str]) -> str | None:
    return attr.get("valueList", attr.get("value"))


def parse_label_config(xml: str, project_id: int | None = None) -> LabelingConfig:
    """Image field and label set of a config; LabelStudioError when it cannot classify images."""
    where = f"project {project_id}'s labeling config" if project_id else "the labeling config"
    try:
        interface = _Interface.parse(xml)
    except (ElementTree.ParseError, ValueError) as exc:
        raise LabelStudioError(f"{where} cannot be parsed: {exc}.") from None
    return _classifier_config(interface, where)


def _classifier_config(interface: _Interface, where: str) -> LabelingConfig:
    """The one Image and its one single-choice Choices, or why the config has none."""
    images = [o for o in interface.objects.values() if o.tag == "Image"]
    choices = [
        c
        for c in interface.controls.values()
        if c.tag == "Choices" and any(t in c.to_name for t in [o.name for o in images])
    ]
    if not images or not choices:
        tags = sorted({c.tag for c in interface.controls.values()})
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
    image = next(o for o in images if o.name in control.to_name)
    value = str(image.value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelStudioError(f'{where}: the Image "{image.name}" has no $field value.')
    labels = tuple(interface.labels.get(control.name, {}))
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
