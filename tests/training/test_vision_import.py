"""torchvision is imported without torch._dynamo (2 s of every cold train, predict and serve),
and nothing that needs the real torch._dynamo afterwards gets the stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_python
from tests.test_startup import loaded_of, run_a2m
from tests.training.conftest import make_split_folder

pytestmark = pytest.mark.training


def test_building_a_network_leaves_dynamo_unloaded() -> None:
    run_python(
        """
        import sys
        import torch
        from annotate2model.training.backbones import build_trunk, meta_trunk

        # The meta build (what preflight checks weights against) first, as a cold train does.
        shapes = {k: v.shape for k, v in meta_trunk("resnet18").state_dict().items()}
        trunk = build_trunk("resnet18")
        assert shapes == {k: v.shape for k, v in trunk.state_dict().items()}
        assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
        assert "torchvision" in sys.modules
        loaded = sorted(m for m in sys.modules if m.startswith("torch._dynamo"))
        assert not loaded, loaded
        """
    )


def test_torchvision_ops_and_dynamo_work_after_it() -> None:
    run_python(
        """
        import sys
        import torch
        from annotate2model.training.vision import import_torchvision

        torchvision = import_torchvision()
        assert import_torchvision() is torchvision
        # roi_align itself (torchvision's compiled op): the mean of a linear ramp over the box
        # is its value at the centre, pixel (1, 1).
        features = torch.arange(16.0).reshape(1, 1, 4, 4)
        boxes = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
        pooled = torchvision.ops.roi_align(features, boxes, output_size=1, aligned=True)
        assert torch.allclose(pooled, torch.tensor([[[[5.0]]]])), pooled
        # The stand-in's function answers with the real one, which it imports when called.
        module = sys.modules["torchvision.ops.roi_align"]

        supported = module.is_compile_supported("cpu")
        import torch._dynamo.utils as real

        assert supported == real.is_compile_supported("cpu")
        assert real.__file__ and hasattr(real, "counters"), "the stand-in stayed in sys.modules"
        assert torch._dynamo.utils is real
        """
    )


def test_dynamo_already_loaded_imports_torchvision_plainly() -> None:
    run_python(
        """
        import sys
        import torch._dynamo.utils as real
        from annotate2model.training.vision import import_torchvision

        import_torchvision()
        assert sys.modules["torch._dynamo.utils"] is real
        module = sys.modules["torchvision.ops.roi_align"]

        assert module.is_compile_supported is real.is_compile_supported
        """
    )


def test_meta_init_skipped_touches_only_meta_tensors() -> None:
    run_python(
        """
        import torch
        from torch import nn
        from annotate2model.training.vision import meta_init_skipped

        before = nn.init.kaiming_normal_
        with meta_init_skipped():
            # Real tensors (this thread's or another's) are initialised as usual meanwhile.
            real = nn.init.kaiming_normal_(torch.zeros(64, 64))
            ones = nn.init.ones_(torch.zeros(3))
            meta = torch.empty(4, 4, device="meta")
            assert nn.init.normal_(meta) is meta
        assert real.std() > 0.01 and bool((ones == 1).all())
        assert nn.init.kaiming_normal_ is before
        """
    )


def test_a_cold_train_loads_neither_dynamo_nor_sympy(tmp_path: Path) -> None:
    """The whole first `a2m train` through torch of a workspace, with a weights file (preflight
    then checks it against a meta-device trunk, and extraction builds the torchvision network and
    exports it): a MobileNet probe (a ResNet's on the CPU runs without torch, lite.py)."""
    import torch

    from annotate2model.training.vision import import_torchvision

    state = import_torchvision().models.get_model("mobilenet_v2", num_classes=3).state_dict()
    weights = tmp_path / "mobilenet.pth"
    torch.save(state, weights)
    folder = make_split_folder(tmp_path / "data", {"ants": 4, "bees": 4}, {"ants": 2, "bees": 2})
    home = {"A2M_HOME": str(tmp_path / "ws")}
    run_a2m(tmp_path, "init", str(tmp_path / "ws"), env=home)
    run_a2m(tmp_path, "import-folder", str(folder), env=home)
    args = ("--backbone", "mobilenet_v2", "--weights", str(weights), "--image-size", "32")
    modules, _ = run_a2m(tmp_path, "train", *args, "--epochs", "1", env=home)
    assert "torchvision" in modules
    assert loaded_of(modules, ("torch._dynamo", "sympy")) == []


def test_a_torchvision_that_loads_dynamo_while_it_loads_is_imported_plainly() -> None:
    """Should a later torch or torchvision load torch._dynamo while torchvision loads (with the
    stand-in in place), the attempt is forgotten and torchvision imported as usual."""
    run_python(
        """
        import importlib.abc
        import sys
        import torch

        class LoadsDynamo(importlib.abc.MetaPathFinder):
            fired = False

            def find_spec(self, name, path=None, target=None):
                if name == "torchvision.models" and not self.fired:
                    self.fired = True
                    import torch._dynamo
                return None

        sys.meta_path.insert(0, LoadsDynamo())
        from annotate2model.training.vision import import_torchvision

        torchvision = import_torchvision()
        import torch._dynamo.utils as real

        assert hasattr(real, "counters") and torch._dynamo.utils is real
        assert type(torchvision.models.get_model("resnet18", weights=None)).__name__ == "ResNet"
        """
    )
