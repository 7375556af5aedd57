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
file that ``make install`` writes into the virtual environment (``python -m fedvlm.install_hook``
after a plain ``pip install``; see :func:`pth_line`).
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

# Run by site.py at every interpreter start of the environment. It loads this file by itself,
# under its own module name, without running fedvlm/__init__.py: the hook must not bring the
# package's process-wide settings (MKL_CBWR) into every Python of the environment. Registered in
# sys.modules, the module stays alive (it holds the schemas) and a later ``import fedvlm`` reuses
# it instead of installing a second finder. Any failure (fedvlm uninstalled, moved) is swallowed:
# a .pth line that raises would break every interpreter start of the environment.
_PTH_CODE = """\
import importlib.util, os, sys
try:
    package = importlib.util.find_spec("fedvlm")
    if package is not None and package.submodule_search_locations and "fedvlm._torchvision_compat" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "fedvlm._torchvision_compat",
            os.path.join(list(package.submodule_search_locations)[0], "_torchvision_compat.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
            module.install()
        except BaseException:
            del sys.modules[spec.name]
            raise
except Exception:
    pass
"""


def pth_line() -> str:
    """The one line of the ``.pth`` file (site.py executes lines that start with ``import``)."""
    return f"import sys; exec({_PTH_CODE!r})\n"


def pth_path(site_dir: str | Path | None = None) -> Path:
    """Where the hook goes: ``site_dir``, else the running environment's site-packages."""
    import sysconfig

    return Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME


def write_pth_file(site_dir: str | Path | None = None) -> bool:
    """Write the hook into ``site_dir`` (default: this environment). Idempotent: returns False
    and leaves the file alone when it already holds this line."""
    path = pth_path(site_dir)
    if path.is_file() and path.read_text() == pth_line():
        return False
    path.write_text(pth_line())
    return True


def remove_pth_file(site_dir: str | Path | None = None) -> bool:
    """Remove the hook (``pip uninstall`` does not: pip never recorded the file). True if removed."""
    path = pth_path(site_dir)
    if not path.is_file():
        return False
    path.unlink()
    return True
