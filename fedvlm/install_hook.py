"""``python -m fedvlm.install_hook``: make torchvision importable beside a CPU-only torch in every
process of this environment, also in those that never import fedvlm (``import lightning`` first).

``make install`` runs it; after a plain ``pip install fedvlm`` run it once yourself (pip cannot
place a ``.pth`` file from a wheel's package data). It writes one ``.pth`` line into the
environment's site-packages; the hook it installs does nothing where torchvision's own extension
loads (a matching CPU or CUDA install), see ``fedvlm._torchvision_compat``. ``--remove`` takes it
out again (``pip uninstall`` leaves it, harmlessly: it does nothing once fedvlm is gone).
"""

from __future__ import annotations

import argparse
import sys

from fedvlm._torchvision_compat import pth_path, remove_pth_file, write_pth_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedvlm.install_hook", description=__doc__.splitlines()[0])
    parser.add_argument("--site-dir", help="site-packages folder to write to (default: this interpreter's)")
    parser.add_argument("--remove", action="store_true", help="remove the hook instead")
    args = parser.parse_args(argv)
    path = pth_path(args.site_dir)
    try:
        if args.remove:
            print(f"removed {path}" if remove_pth_file(args.site_dir) else f"no hook at {path}")
        elif write_pth_file(args.site_dir):
            print(f"wrote {path}")
    except OSError as error:
        print(f"error: cannot write the torchvision hook {path}: {error.strerror}; give a writable "
              "site-packages folder with --site-dir", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
