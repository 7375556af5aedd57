"""The environment a user imports from: torchvision's users import alone, in a fresh interpreter of
the installed venv (``make install`` writes the hook, ``python -m fedvlm.install_hook`` after a plain
pip install; see fedvlm/_torchvision_compat.py)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fedvlm import _torchvision_compat
from fedvlm.install_hook import main as install_hook

REPOSITORY = Path(__file__).resolve().parents[1]
MISSING_OPERATOR = "operator torchvision::nms does not exist"


def _python(code: str, *flags: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter of this venv, started outside the checkout (so the working directory
    puts no fedvlm on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("module", ["lightning", "open_clip", "torchmetrics"])
def test_each_torchvision_user_imports_alone_in_the_installed_venv(module, tmp_path):
    # No PYTHONPATH and no `import fedvlm`: only what the venv's site-packages holds, as in a
    # notebook whose first cell is `import lightning as L`.
    result = _python(f"import sys, {module}\nassert 'fedvlm' not in sys.modules, 'the hook ran fedvlm/__init__'",
                     cwd=tmp_path)
    hint = f"\nno hook at {_torchvision_compat.pth_path()}? run make install (python -m fedvlm.install_hook)"
    assert result.returncode == 0, result.stderr[-2000:] + hint


def test_the_pth_line_alone_makes_torchvision_importable(tmp_path):
    # -S: the venv's site-packages on the path but none of its .pth files run, so the hook in
    # tmp_path is the only thing that can make the import work; this checkout's fedvlm is the one found.
    install_hook(["--site-dir", str(tmp_path)])
    prefix = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
    hooked = _python(prefix + f"import site; site.addsitedir({str(tmp_path)!r})\n"
                     "import lightning\n"
                     "assert 'fedvlm' not in sys.modules  # the hook alone, not the package's settings\n"
                     "import fedvlm\n"
                     "assert fedvlm._torchvision_compat is sys.modules['fedvlm._torchvision_compat']\n"
                     "print('ok')", "-S", cwd=tmp_path, pythonpath=str(REPOSITORY))
    assert hooked.returncode == 0 and hooked.stdout.strip() == "ok", hooked.stderr[-2000:]
    bare = _python(prefix + "import lightning", "-S", cwd=tmp_path, pythonpath=str(REPOSITORY))
    if bare.returncode != 0:  # where torchvision's extension loads there is nothing to repair
        assert MISSING_OPERATOR in bare.stderr


def test_install_is_idempotent_and_removable(tmp_path, capsys):
    path = tmp_path / _torchvision_compat.PTH_NAME
    assert install_hook(["--site-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    assert path.read_text() == _torchvision_compat.pth_line() and path.read_text().startswith("import ")
    assert install_hook(["--site-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""  # unchanged: nothing written, nothing said
    assert install_hook(["--site-dir", str(tmp_path), "--remove"]) == 0 and not path.exists()
    assert capsys.readouterr().out.strip() == f"removed {path}"


def test_an_unwritable_site_dir_is_one_line_exit_2(tmp_path, capsys):
    assert install_hook(["--site-dir", str(tmp_path / "no-such-dir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-dir" in err and "--site-dir" in err


def test_the_hook_does_nothing_where_the_extension_loads(tmp_path):
    # A torchvision whose _C extension loads: any loadable shared library stands in for it.
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(importlib.util.find_spec("_ctypes").origin, package / "_C.so")
    result = _python("from fedvlm._torchvision_compat import patch_torchvision_ops\n"
                     "declared = patch_torchvision_ops()\n"
                     "import torch\n"
                     "print(declared, hasattr(torch.ops.torchvision, 'nms'))",
                     cwd=tmp_path, pythonpath=os.pathsep.join([str(tmp_path), str(REPOSITORY)]))
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]
