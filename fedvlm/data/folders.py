"""Reading ImageFolder trees: ``<root>/<class_name>/<image file>``."""

from __future__ import annotations

from pathlib import Path

from fedvlm.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})


def scan_image_folder(root: str | Path, expected: str = "<root>/<class>/<image>") -> tuple[list[Path], list[int], list[str]]:
    """List an ImageFolder tree.

    Returns (paths, labels, class_folders): image paths sorted by class folder then file name,
    their integer labels, and the sorted class folder names (label i is ``class_folders[i]``).
    ``expected`` describes the layout in the error message when the tree is missing or empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; expected {expected}")
    class_folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_folders:
        raise DataError(f"dataset folder {root} has no class sub-folders; expected {expected}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_folders):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images; expected {expected}")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, class_folders
