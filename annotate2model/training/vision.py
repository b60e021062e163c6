"""torchvision networks built without loading torch._dynamo (2 s of every cold command).

Two things load torch._dynamo (and sympy) when nothing here asks for it:

- `import torchvision` loads `torchvision.ops`, whose `roi_align.py` imports
  `torch._dynamo.utils` at module level for one function it calls only inside `roi_align`.
  torchvision's maintainers call an eager dynamo import undesirable for eager-mode users
  (pytorch/vision#8436, whose `lazy_compile` was meant to avoid it). `import_torchvision` imports
  it with a stand-in for that one module, whose `is_compile_supported` imports the real one when
  it is first called. The stand-in leaves `sys.modules` before the import returns, so anything
  later (`torch.compile`, `torch.optim`) imports the real torch._dynamo as usual. Should another
  torch or torchvision load torch._dynamo while torchvision loads, that attempt is forgotten and
  torchvision imported plainly.
- Random initialisation on the meta device runs torch's Python references, which import
  torch._dynamo and sympy. A network built on the meta device only gives names and shapes, so
  `meta_init_skipped` makes `torch.nn.init`'s functions leave meta tensors alone meanwhile
  (every other tensor is initialised as usual, by any thread).

Loading torch._dynamo takes about 2 s on a small CPU, more than torchvision itself (0.2 s): a cold
`a2m train` paid it twice over. Every torchvision import in this package goes through
`import_torchvision`, and every meta-device build through `meta_init_skipped`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

_DYNAMO_UTILS = "torch._dynamo.utils"
_import_lock = threading.Lock()
_init_lock = threading.Lock()


def _is_compile_supported(device_type: str) -> bool:
    from torch._dynamo.utils import is_compile_supported

    return bool(is_compile_supported(device_type))


def import_torchvision() -> ModuleType:
    """The torchvision module, imported (once) without torch._dynamo where that can be done."""
    with _import_lock:
        loaded = sys.modules.get("torchvision")
        if loaded is not None:
            return loaded
        if _DYNAMO_UTILS in sys.modules:
            return importlib.import_module("torchvision")
        before = set(sys.modules)
        stand_in = ModuleType(_DYNAMO_UTILS)
        stand_in.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
        sys.modules[_DYNAMO_UTILS] = stand_in
        try:
            importlib.import_module("torchvision")
            clean = "torch._dynamo" not in sys.modules
        except Exception:
            clean = False
        finally:
            if sys.modules.get(_DYNAMO_UTILS) is stand_in:
                del sys.modules[_DYNAMO_UTILS]
        if not clean:
            # A torch or torchvision that loads torch._dynamo while torchvision loads (the
            # stand-in may be bound into it): forget what that import loaded, import plainly.
            for name in set(sys.modules) - before:
                del sys.modules[name]
        return importlib.import_module("torchvision")


def _leaving_meta_alone(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(tensor, "is_meta", False):
            return tensor
        return original(tensor, *args, **kwargs)

    return init


@contextlib.contextmanager
def meta_init_skipped() -> Iterator[None]:
    """While inside, `torch.nn.init`'s in-place functions return meta tensors untouched."""
    from torch.nn import init

    with _init_lock:
        originals = {
            name: getattr(init, name)
            for name in dir(init)
            if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))
        }
        for name, original in originals.items():
            setattr(init, name, _leaving_meta_alone(original))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(init, name, original)
