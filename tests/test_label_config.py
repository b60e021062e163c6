"""parse_label_config reads configs as the SDK's LabelInterface does, without importing the SDK.

The reference below reads each config with `LabelInterface` itself and applies the same rules to
what it found: every config must give the same LabelingConfig, or fail with the same message.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.config import (
    LabelingConfig,
    _classifier_config,
    _Interface,
    _Tag,
    build_label_config,
    parse_label_config,
)


def reference(xml: str, project_id: int | None = None) -> LabelingConfig:
    """The same reading on the SDK's own `LabelInterface`: its controls, objects and labels put
    into our interface record and checked by the same rules."""
    from label_studio_sdk.label_interface.interface import LabelInterface

    where = f"project {project_id}'s labeling config" if project_id else "the labeling config"
    try:
        sdk = LabelInterface(xml)
    except Exception as exc:
        raise LabelStudioError(f"{where} cannot be parsed: {exc}.") from None
    interface = _Interface(
        controls={
            c.name: _Tag(c.tag, c.name, dict(c.attr), to_name=list(c.to_name)) for c in sdk.controls
        },
        objects={o.name: _Tag(o.tag, o.name, dict(o.attr), value=o.value) for o in sdk.objects},
        labels={c.name: dict.fromkeys(str(label) for label in c.labels) for c in sdk.controls},
    )
    return _classifier_config(interface, where)


CONFIGS = {
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


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reads_configs_as_the_sdk_does(name: str) -> None:
    xml = CONFIGS[name]
    try:
        expected: LabelingConfig | str = reference(xml, 7)
    except LabelStudioError as exc:
        expected = str(exc)
    try:
        got: LabelingConfig | str = parse_label_config(xml, 7)
    except LabelStudioError as exc:
        got = str(exc)
    assert got == expected


def test_the_readings_that_matter() -> None:
    """A few outcomes spelled out, so the comparison above cannot pass by both being wrong."""
    nested = parse_label_config(CONFIGS["choices nested in views, aliases, a duplicate"])
    assert nested == LabelingConfig("url", "kind", "img", ("cat", "dog", "Bird"))
    assert parse_label_config(CONFIGS["a Filter inside the choices"]).labels == ("a", "b")
    with pytest.raises(LabelStudioError, match=r"several Choices controls \(a, b\)"):
        parse_label_config(CONFIGS["two choices on the image"])
    with pytest.raises(LabelStudioError, match=r"classification\); it has Choices\.$"):
        parse_label_config(CONFIGS["toName naming nothing"])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unparsable_configs_fail_like_the_sdk(name: str) -> None:
    with pytest.raises(LabelStudioError, match="project 3's labeling config cannot be parsed"):
        reference(BROKEN[name], 3)
    with pytest.raises(LabelStudioError, match="project 3's labeling config cannot be parsed"):
        parse_label_config(BROKEN[name], 3)


def test_reading_a_config_does_not_load_the_sdk() -> None:
    code = (
        "import sys\n"
        "from annotate2model.labelstudio.config import build_label_config, parse_label_config\n"
        "parse_label_config(build_label_config(['a', 'b']))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('label_studio_sdk', 'pydantic', 'lxml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
