"""parse_label_config reads a project's config with the SDK's LabelInterface and keeps what an
image classifier needs: one Image, one single-choice Choices on it, its labels in order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.config import (
    LabelingConfig,
    build_label_config,
    parse_label_config,
)

ACCEPTED = {
    "built by a2m": build_label_config(["cat", "dog", "bird"]),
    "Label Studio's image classification template": """
<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="Adult content"/>
    <Choice value="Weapons" />
    <Choice value="Violence" />
  </Choices>
</View>""",
    "comments, a header and a sample task": """
<View>
  <!-- {"data": {"photo": "https://example.com/x.jpg"}} -->
  <Header value="Which animal?"/>
  <Image name="img" value="$photo" zoom="true"/>
  <Choices name="species" toName="img" choice="single-radio" showInline="true">
    <Choice value="ant"/><Choice value="bee"/>
  </Choices>
</View>""",
    "choices nested in views, aliases, a duplicate": """
<View>
  <Image name="img" value="$url"/>
  <Choices name="kind" toName="img">
    <View style="display: flex"><View>
      <Choice value="Cat" alias="cat"/>
      <Choice value="dog"/>
    </View></View>
    <Choice value="dog"/>
    <Choice value="Bird"/>
  </Choices>
</View>""",
    "several objects in toName": """
<View>
  <Text name="caption" value="$caption"/>
  <Image name="img" value="$image"/>
  <Choices name="c" toName="caption,img"><Choice value="x"/><Choice value="y"/></Choices>
</View>""",
    "valueList on the image": """
<View>
  <Image name="img" valueList="$images"/>
  <Choices name="c" toName="img"><Choice value="x"/></Choices>
</View>""",
    "a Choices on text and one on the image": """
<View>
  <Text name="t" value="$text"/>
  <Choices name="mood" toName="t"><Choice value="happy"/></Choices>
  <Image name="img" value="$image"/>
  <Choices name="label" toName="img"><Choice value="a"/><Choice value="b"/></Choices>
</View>""",
    "a Filter inside the choices": """
<View>
  <Image name="img" value="$image"/>
  <Choices name="label" toName="img">
    <Filter name="f" toName="label" minlength="0"/>
    <Choice value="a"/><Choice value="b"/>
  </Choices>
</View>""",
    "rectangles and choices": """
<View>
  <Image name="img" value="$image"/>
  <RectangleLabels name="box" toName="img"><Label value="car"/></RectangleLabels>
  <Choices name="scene" toName="img"><Choice value="day"/><Choice value="night"/></Choices>
</View>""",
}

REJECTED = {
    "text only": """
<View><Text name="t" value="$text"/>
<Choices name="c" toName="t"><Choice value="x"/></Choices></View>""",
    "no controls at all": '<View><Image name="img" value="$image"/></View>',
    "two choices on the image": """
<View>
  <Image name="img" value="$image"/>
  <Choices name="a" toName="img"><Choice value="x"/></Choices>
  <Choices name="b" toName="img"><Choice value="y"/></Choices>
</View>""",
    "multiple choice": """
<View>
  <Image name="img" value="$image"/>
  <Choices name="c" toName="img" choice="multiple"><Choice value="x"/></Choices>
</View>""",
    "image without a $field": """
<View>
  <Image name="img" value="https://example.com/fixed.jpg"/>
  <Choices name="c" toName="img"><Choice value="x"/></Choices>
</View>""",
    "choices without a choice": """
<View>
  <Image name="img" value="$image"/>
  <Choices name="c" toName="img"><Choice alias=""/></Choices>
</View>""",
    "toName naming nothing": """
<View>
  <Image name="img" value="$image"/>
  <Choices name="c" toName="picture"><Choice value="x"/></Choices>
</View>""",
}


BROKEN = {
    "not XML": "<View><Image name='img' value='$image'></View>",
    "empty": "",
}

# What each accepted config gives: (image field, from_name, to_name, labels).
READINGS = {
    "built by a2m": ("image", "label", "image", ("cat", "dog", "bird")),
    "Label Studio's image classification template": (
        "image",
        "choice",
        "image",
        ("Adult content", "Weapons", "Violence"),
    ),
    "comments, a header and a sample task": ("photo", "species", "img", ("ant", "bee")),
    # An alias is the label's name in results; a label listed twice counts once.
    "choices nested in views, aliases, a duplicate": ("url", "kind", "img", ("cat", "dog", "Bird")),
    "several objects in toName": ("image", "c", "img", ("x", "y")),
    "valueList on the image": ("images", "c", "img", ("x",)),
    "a Choices on text and one on the image": ("image", "label", "img", ("a", "b")),
    "a Filter inside the choices": ("image", "label", "img", ("a", "b")),
    "rectangles and choices": ("image", "scene", "img", ("day", "night")),
}

# The message each rejected config gives, after "project 7's labeling config".
NO_IMAGE_CHOICES = " needs an <Image> and a <Choices> control on it (image classification); it has"
ERRORS = {
    "text only": f"{NO_IMAGE_CHOICES} Choices.",
    "no controls at all": f"{NO_IMAGE_CHOICES} no controls.",
    "two choices on the image": " has several Choices controls (a, b); keep one.",
    "multiple choice": ' lets annotators pick several choices in "c"; '
    'a classifier needs choice="single".',
    "image without a $field": ': the Image "img" has no $field value.',
    "choices without a choice": ': the Choices "c" lists no choices.',
    "toName naming nothing": f"{NO_IMAGE_CHOICES} Choices.",
}


def test_every_config_has_its_expected_outcome() -> None:
    assert READINGS.keys() == ACCEPTED.keys()
    assert ERRORS.keys() == REJECTED.keys()


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_reads_the_image_field_the_choices_and_their_labels(name: str) -> None:
    assert parse_label_config(ACCEPTED[name], 7) == LabelingConfig(*READINGS[name])


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_configs_that_cannot_classify_images_say_why(name: str) -> None:
    with pytest.raises(LabelStudioError) as caught:
        parse_label_config(REJECTED[name], 7)
    assert str(caught.value) == "project 7's labeling config" + ERRORS[name]


def test_without_a_project_the_message_names_the_config() -> None:
    with pytest.raises(LabelStudioError, match=r"^the labeling config has several Choices"):
        parse_label_config(REJECTED["two choices on the image"])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unparsable_configs_say_so(name: str) -> None:
    with pytest.raises(LabelStudioError, match=r"^project 3's labeling config cannot be parsed: "):
        parse_label_config(BROKEN[name], 3)


def test_a_built_config_reads_back_with_any_label_text() -> None:
    labels = ["cat", 'a "quoted" <b> & c', "  spaced  ", "ünïcode"]
    xml = build_label_config(labels)
    assert 'choice="single"' in xml
    assert parse_label_config(xml) == LabelingConfig(
        "image", "label", "image", ("cat", 'a "quoted" <b> & c', "spaced", "ünïcode")
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [([], "at least one label"), ([" ", ""], "at least one label"), (["a", "b", "a"], "twice")],
)
def test_a_new_config_needs_distinct_labels(labels: list[str], message: str) -> None:
    with pytest.raises(LabelStudioError, match=message):
        build_label_config(labels)


def test_a_config_read_once_is_not_read_by_the_sdk_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged project's config is read from the memo (a no-change sync then imports no
    SDK); another config, or a damaged memo file, is read by the SDK again."""
    xml = ACCEPTED["built by a2m"]
    memo = tmp_path / "label-configs"
    first = parse_label_config(xml, 3, memo)
    assert len(list(memo.iterdir())) == 1
    # Without the SDK at all, the memo still answers for this config, and only for it.
    for name in [m for m in sys.modules if m.startswith("label_studio_sdk")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)
    assert parse_label_config(xml, 3, memo) == first
    with pytest.raises(ImportError):
        parse_label_config(xml.replace("bird", "fish"), 3, memo)
    monkeypatch.undo()
    (only,) = memo.iterdir()
    only.write_text("{not json")
    assert parse_label_config(xml, 3, memo) == first
    assert parse_label_config(xml, 3, memo).labels == ("cat", "dog", "bird")
