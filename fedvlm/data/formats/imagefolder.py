"""ImageFolder trees: ``<root>/<class_folder>/<file>.png`` plus ``<root>/metadata.csv``.

The metadata file follows the Hugging Face ``imagefolder`` convention (a ``file_name`` column
relative to the root, then free columns), so ``datasets.load_dataset("imagefolder", data_dir=root)``
also reads it; ``scan_image_folder`` ignores it (it only lists class sub-folders).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from fedvlm.data.folders import scan_image_folder
from fedvlm.errors import DataError
from fedvlm.files import read_text

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

LAYOUT = "<root>/<class_folder>/<image>.png with <root>/metadata.csv"
METADATA_COLUMNS = ("file_name", "label", "scene_class", "sample_id", "style_id", "seed", "objects")


class ImageFolderWriter:
    """Writes one PNG per sample into its class folder; ``close()`` writes metadata.csv."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows: list[dict] = []

    def add(self, sample_id: int, scene: "RenderedScene") -> str:
        folder = scene.scene_class.replace(" ", "_")
        relative = f"{folder}/{folder}_{sample_id:06d}.png"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.rgb).save(path, compress_level=1)
        self.rows.append({"file_name": relative, "label": scene.label, "scene_class": scene.scene_class,
                          "sample_id": sample_id, "style_id": scene.style_id, "seed": scene.seed,
                          "objects": ";".join(scene.object_types)})
        return relative

    def close(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda row: row["file_name"]))


def read_imagefolder(root: str | Path) -> tuple[list[Path], list[int], list[str], list[dict]]:
    """(paths, labels, class_folders, metadata rows aligned with paths) of an ImageFolder tree.

    Paths and labels come from ``scan_image_folder``; metadata rows are matched by file name
    (an empty dict for an image the metadata file does not list; no rows without metadata.csv).
    """
    root = Path(root)
    paths, labels, class_folders = scan_image_folder(root, expected=LAYOUT)
    metadata_path = root / "metadata.csv"
    rows: dict[str, dict] = {}
    if metadata_path.is_file():
        expected = f"a CSV whose first column file_name is an image path relative to {root}"
        text = read_text(metadata_path, "metadata file", expected)
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is None or "file_name" not in reader.fieldnames:
                raise DataError(f"{metadata_path} has no file_name column; expected {expected}")
            rows = {row["file_name"]: row for row in reader}
        except csv.Error as error:
            raise DataError(f"metadata file {metadata_path} is not a valid CSV file ({error}); expected {expected}") from None
    metadata = [rows.get(path.relative_to(root).as_posix(), {}) for path in paths]
    return paths, labels, class_folders, metadata
