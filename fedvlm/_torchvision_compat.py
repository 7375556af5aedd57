"""Make ``import torchvision`` work beside a CPU-only torch.

Why: the torchvision release pinned to torch 2.13.0 on PyPI is a CUDA build. Its ``_C.so`` links
CUDA libraries a CPU torch lacks; torchvision tolerates that load failure but then registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and the import dies
with ``RuntimeError: operator torchvision::nms does not exist``. Everything that imports
torchvision dies with it: open_clip, timm, torchmetrics and lightning.

Fix: just before torchvision is first imported, try to load its ``_C`` extension ourselves. Where
it loads (a matching CUDA or CPU install) we do nothing more, so real installs are untouched.
Only where it fails do we declare the two operator *schemas* (no kernels), which lets the fake
registrations succeed. Transforms, ImageFolder and open_clip preprocessing then work; only
``torchvision.ops.nms`` and ``torchvision.io`` decoding stay unavailable (CLIP needs neither).

The hook is a ``sys.meta_path`` finder, so it costs nothing until torchvision is imported. It is
installed by ``import fedvlm`` and, for processes that never import fedvlm first (notebook
kernels, DDP children, plain ``import lightning``), by the ``fedvlm_torchvision_compat.pth``
file that ``make install`` writes into the virtual environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_library = None  # keeps the schema-only torch.library.Library alive for the process lifetime
_patched = False


def _extension_paths() -> list[Path]:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return []
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))


def patch_torchvision_ops() -> bool:
    """Declare the missing operator schemas if torchvision's extension cannot load.

    Returns True when schemas were declared (the CPU-torch + CUDA-torchvision case), False when
    nothing had to be done. Safe to call more than once.
    """
    global _library, _patched
    if _patched:
        return _library is not None
    _patched = True
    import torch

    for path in _extension_paths():
        try:
            torch.ops.load_library(str(path))
            return False  # the real extension works: leave everything as torchvision expects
        except (ImportError, OSError):
            pass
    if hasattr(torch.ops.torchvision, "nms"):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`patch_torchvision_ops` once, right before torchvision's first import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            patch_torchvision_ops()
        return None  # let the normal finders import the module


def install() -> None:
    """Install the import hook (idempotent). If torchvision is already imported, do nothing."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(finder, _TorchvisionFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


PTH_NAME = "fedvlm_torchvision_compat.pth"


def write_pth_file() -> Path:
    """Write the ``.pth`` line that installs the hook at every interpreter start of this env.

    The line swallows errors so an uninstalled fedvlm never breaks the interpreter.
    """
    import sysconfig

    line = (
        'import sys; exec("try:\\n    import fedvlm._torchvision_compat as _m; _m.install()\\n'
        'except Exception:\\n    pass")\n'
    )
    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    path.write_text(line)
    return path


if __name__ == "__main__":
    print(f"wrote {write_pth_file()}")
