"""Multispectral datasets as they ship: EuroSAT-MS GeoTIFFs and BigEarthNet patch folders.

EuroSAT (single-label): ``EuroSAT_MS/<Class>/<Class>_<n>.tif``, one 13-band uint16 TIFF per
image (digital numbers = reflectance x 10000, all bands resampled to one grid, band order B01..B08,
B8A, B09..B12 as ``EUROSAT_BANDS``), with the RGB version at ``EuroSAT_RGB/<Class>/<Class>_<n>.jpg``
(same stem: the pair for cross-modal alignment).

BigEarthNet (multi-label): ``BigEarthNet-v1.0/<patch>/<patch>_<band>.tif``, one single-band uint16
TIFF per band at its native resolution (10 m bands B02, B03, B04, B08 at full size, 20 m bands at
half, 60 m bands at a sixth; B10 is not distributed), and ``<patch>/<patch>_labels_metadata.json``
with a ``labels`` list (plus coordinates, projection, tile_source, acquisition_date). The reader
upsamples every band to the 10 m grid (bilinear).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image

from fedvlm.data.formats.common import MultispectralSet, require_dir, require_strings
from fedvlm.errors import DataError
from fedvlm.files import read_json

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

EUROSAT_LAYOUT = "<root>/EuroSAT_MS/<Class>/<Class>_<n>.tif (13-band uint16 GeoTIFF), RGB in <root>/EuroSAT_RGB/"
BIGEARTHNET_LAYOUT = ("<root>/BigEarthNet-v1.0/<patch>/<patch>_<B01..B12,B8A>.tif and "
                      "<patch>/<patch>_labels_metadata.json with a 'labels' list")
# EuroSAT-MS band order (B8A after B08; B10 included).
EUROSAT_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
BIGEARTHNET_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
BAND_RESOLUTION_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
                     "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
DIGITAL_NUMBER_SCALE = 10000.0


def camel_case(name: str) -> str:
    """'dense residential' -> 'DenseResidential' (EuroSAT's class folder style)."""
    return "".join(word.capitalize() for word in name.split())


def to_digital_numbers(reflectance: np.ndarray) -> np.ndarray:
    return np.clip(np.round(reflectance * DIGITAL_NUMBER_SCALE), 0, 65535).astype(np.uint16)


def _read_tiff(path: Path, layout: str) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except FileNotFoundError:
        raise DataError(f"band file {path} does not exist; expected {layout}") from None
    except (tifffile.TiffFileError, ValueError, OSError, KeyError) as error:
        raise DataError(f"TIFF file {path} is unreadable or corrupt ({error.__class__.__name__}: {error})") from None
    if array.size == 0:
        raise DataError(f"TIFF file {path} is unreadable or corrupt (no image data)")
    return array


# --------------------------------------------------------------------------------------------- EuroSAT

class EuroSATWriter:
    """EuroSAT_MS/<Class>/<Class>_<n>.tif plus the RGB pair EuroSAT_RGB/<Class>/<Class>_<n>.jpg."""

    def __init__(self, root: str | Path, jpeg_quality: int = 95):
        self.root = Path(root)
        self.quality = jpeg_quality
        self.per_class: dict[str, int] = {}

    def add(self, sample_id: int, scene: "RenderedScene") -> str:
        folder = camel_case(scene.scene_class)
        number = self.per_class.get(folder, 0) + 1
        self.per_class[folder] = number
        stem = f"{folder}_{number}"
        for tree in ("EuroSAT_MS", "EuroSAT_RGB"):
            (self.root / tree / folder).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(self.root / "EuroSAT_MS" / folder / f"{stem}.tif", to_digital_numbers(scene.bands),
                         photometric="minisblack", planarconfig="contig",
                         metadata={"bands": ",".join(EUROSAT_BANDS)})
        Image.fromarray(scene.rgb).save(self.root / "EuroSAT_RGB" / folder / f"{stem}.jpg", quality=self.quality)
        return f"EuroSAT_MS/{folder}/{stem}.tif"

    def close(self) -> None:
        pass


def load_eurosat_tiff(path: str | Path) -> np.ndarray:
    """A EuroSAT-MS TIFF as [H, W, 13] float32 reflectance (band-first files are transposed)."""
    array = _read_tiff(Path(path), EUROSAT_LAYOUT)
    bands = len(EUROSAT_BANDS)
    if array.ndim == 3 and array.shape[0] == bands and array.shape[-1] != bands:
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != bands:
        raise DataError(f"TIFF file {path} has shape {array.shape}; expected [H, W, {bands}] (13 Sentinel-2 bands)")
    return array.astype(np.float32) / DIGITAL_NUMBER_SCALE


def read_eurosat_ms(root: str | Path) -> MultispectralSet:
    """EuroSAT-MS: paths, int labels (class folders sorted), band names and paired RGB paths.

    ``root`` is the folder holding ``EuroSAT_MS/`` (or EuroSAT_MS itself); RGB pairs are looked up
    in the sibling ``EuroSAT_RGB/`` by stem and are None when that tree is absent.
    """
    root = Path(root)
    ms_root = root if root.name == "EuroSAT_MS" else root / "EuroSAT_MS"
    require_dir(ms_root, EUROSAT_LAYOUT)
    class_folders = sorted(p.name for p in ms_root.iterdir() if p.is_dir())
    if not class_folders:
        raise DataError(f"{ms_root} has no class folders; expected {EUROSAT_LAYOUT}")
    paths, labels = [], []
    for label, folder in enumerate(class_folders):
        files = sorted((ms_root / folder).glob("*.tif"))
        if not files:
            raise DataError(f"class folder {ms_root / folder} holds no .tif files; expected {EUROSAT_LAYOUT}")
        paths += files
        labels += [label] * len(files)
    rgb_root = ms_root.parent / "EuroSAT_RGB"
    rgb_paths = None
    if rgb_root.is_dir():
        rgb_paths = []
        for path in paths:
            rgb = rgb_root / path.parent.name / f"{path.stem}.jpg"
            if not rgb.is_file():
                raise DataError(f"RGB pair {rgb} of {path} does not exist; expected the same stem in {rgb_root}")
            rgb_paths.append(rgb)
    return MultispectralSet(paths, np.asarray(labels, dtype=np.int64), class_folders, list(EUROSAT_BANDS),
                            rgb_paths, load_eurosat_tiff)


# ----------------------------------------------------------------------------------------- BigEarthNet

def patch_name(sample_id: int) -> str:
    """A BigEarthNet-style patch name (tile, acquisition time, row, column) that encodes ``sample_id``."""
    return f"S2A_MSIL2A_20170613T101031_{sample_id // 100}_{sample_id % 100}"


def _resample(band: np.ndarray, size: int) -> np.ndarray:
    """Resample a band to size x size: box-average down, bilinear up."""
    if band.shape[0] == size:
        return band
    image = Image.fromarray(band.astype(np.float32), mode="F")
    method = Image.BOX if band.shape[0] > size else Image.BILINEAR
    return np.asarray(image.resize((size, size), method))


class BigEarthNetWriter:
    """BigEarthNet-v1.0/<patch>/<patch>_<band>.tif at native band resolutions + labels metadata JSON."""

    def __init__(self, root: str | Path, min_fraction: float = 0.05):
        self.base = Path(root) / "BigEarthNet-v1.0"
        self.min_fraction = min_fraction

    def add(self, sample_id: int, scene: "RenderedScene") -> str:
        name = patch_name(sample_id)
        folder = self.base / name
        folder.mkdir(parents=True, exist_ok=True)
        size = scene.bands.shape[0]
        for band in BIGEARTHNET_BANDS:
            grid = max(1, round(size * 10 / BAND_RESOLUTION_M[band]))
            values = _resample(scene.bands[..., EUROSAT_BANDS.index(band)], grid)
            tifffile.imwrite(folder / f"{name}_{band}.tif", to_digital_numbers(values), photometric="minisblack")
        metadata = {
            "labels": scene.land_cover(self.min_fraction),
            "coordinates": {"ulx": 600000 + 1200 * (sample_id % 100), "uly": 5000000 - 1200 * (sample_id // 100),
                            "lrx": 600000 + 1200 * (sample_id % 100) + 10 * size,
                            "lry": 5000000 - 1200 * (sample_id // 100) - 10 * size},
            "projection": "synthetic (no geographic meaning)",
            "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101701",
            "acquisition_date": "2017-06-13 10:10:31",
        }
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps(metadata))
        return f"BigEarthNet-v1.0/{name}"

    def close(self) -> None:
        pass


def load_bigearthnet_patch(folder: str | Path) -> np.ndarray:
    """A BigEarthNet patch folder as [H, W, 12] float32 reflectance on the 10 m grid."""
    folder = Path(folder)
    bands = [_read_tiff(folder / f"{folder.name}_{band}.tif", BIGEARTHNET_LAYOUT) for band in BIGEARTHNET_BANDS]
    size = max(b.shape[0] for b in bands)
    for band_name, band in zip(BIGEARTHNET_BANDS, bands):
        if band.ndim != 2:
            raise DataError(f"band file {folder / f'{folder.name}_{band_name}.tif'} has shape {band.shape}; "
                            f"expected one 2-D band")
    return np.stack([_resample(b, size) for b in bands], axis=-1).astype(np.float32) / DIGITAL_NUMBER_SCALE


def read_bigearthnet(root: str | Path, class_names: list[str] | None = None) -> MultispectralSet:
    """Patch folders, [N, C] multi-hot labels and band names of a BigEarthNet-style archive.

    ``class_names`` fixes the label columns (default: every label seen, sorted).
    """
    root = Path(root)
    base = root if (root.name.startswith("BigEarthNet") and root.is_dir()) else root / "BigEarthNet-v1.0"
    require_dir(base, BIGEARTHNET_LAYOUT)
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{base} has no patch folders; expected {BIGEARTHNET_LAYOUT}")
    patch_labels = []
    for folder in folders:
        metadata_path = folder / f"{folder.name}_labels_metadata.json"
        metadata = read_json(metadata_path, "BigEarthNet labels file", BIGEARTHNET_LAYOUT)
        labels = metadata.get("labels") if isinstance(metadata, dict) else None
        if not isinstance(labels, list):
            raise DataError(f"BigEarthNet labels file {metadata_path} has no 'labels' list; expected a JSON object "
                            f"with a 'labels' list of CORINE class names")
        patch_labels.append(require_strings(labels, metadata_path, "labels"))
    names = class_names or sorted({label for labels in patch_labels for label in labels})
    column = {name: i for i, name in enumerate(names)}
    labels = np.zeros((len(folders), len(names)), dtype=np.float32)
    for row, patch in enumerate(patch_labels):
        for label in patch:
            if label not in column:
                raise DataError(f"patch {folders[row]} has label {label!r}, not among the given class names")
            labels[row, column[label]] = 1.0
    return MultispectralSet(folders, labels, names, list(BIGEARTHNET_BANDS), None, load_bigearthnet_patch)
