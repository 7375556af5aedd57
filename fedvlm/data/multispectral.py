"""Multispectral datasets paired with RGB images, for patching and cross-modal alignment.

A :class:`MultispectralImages` is a :class:`~fedvlm.data.datasets.LabelledImages` whose ``paths``
are RGB images (what CLIP's image encoder, the teacher, sees and what the image feature cache
encodes) and whose ``band_paths[i]`` is the multispectral version of the same scene (what the
student encoder of the alignment stage sees; "Mind the Modality Gap" Sec. III-B). The band files
are read by the readers of :mod:`fedvlm.data.formats.multispectral` (EuroSAT-MS GeoTIFFs,
BigEarthNet patch folders).

RGB side: EuroSAT ships RGB images beside the bands (``EuroSAT_RGB/``, same stem) and those are
used. BigEarthNet ships bands only; as in the paper (``T_RGB``), the RGB composite is made from
B04, B03, B02: reflectance x ``COMPOSITE_GAIN`` clipped to [0, 1] (the usual true-colour gain for
Sentinel-2 surface reflectance), written once as PNG under ``$FEDVLM_CACHE/composites/`` so the
image feature cache and pixel heads read it like any image file.

BigEarthNet nomenclatures: ``bigearthnet`` keeps the CORINE Level-3 labels found in the archive
(the 43 classes on the full archive); ``bigearthnet19`` maps them to the 19-class nomenclature of
Sumbul et al. (BigEarthNet-MM, 2021), the one the paper patches with (BigEarthNet-19), dropping
the labels that nomenclature removes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from fedvlm.data.types import DatasetSpec, LabelledImages
from fedvlm.errors import DataError
from fedvlm.paths import cache_root

COMPOSITE_GAIN = 2.5
RGB_BANDS = ("B04", "B03", "B02")


@dataclass(frozen=True)
class MultispectralImages(LabelledImages):
    """RGB ``paths`` plus the multispectral ``band_paths`` of the same scenes."""

    band_paths: list[Path] = field(default_factory=list)
    band_names: list[str] = field(default_factory=list)
    band_loader: Callable[[Path], np.ndarray] | None = None  # path -> [H, W, bands] float32 reflectance

    def load_bands(self, index: int) -> np.ndarray:
        return self.band_loader(self.band_paths[index])


def rgb_composite(bands: np.ndarray, band_names: list[str], gain: float = COMPOSITE_GAIN) -> np.ndarray:
    """True-colour composite ``[H, W, 3]`` uint8 of reflectance ``bands [H, W, B]`` (B04, B03, B02)."""
    try:
        channels = [band_names.index(name) for name in RGB_BANDS]
    except ValueError:
        raise DataError(f"an RGB composite needs bands {', '.join(RGB_BANDS)}; the dataset has {band_names}") from None
    rgb = np.clip(bands[..., channels] * gain, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def composite_paths(band_paths: list[Path], band_names: list[str], loader, cache_dir: str | Path | None = None
                    ) -> list[Path]:
    """RGB composites of every band file, written once under ``<cache>/composites/<key>/``."""

    digest = hashlib.sha256(f"gain={COMPOSITE_GAIN}|v1".encode())
    for path in band_paths:
        digest.update(f"{Path(path).resolve()}\n".encode())
    folder = cache_root(cache_dir) / "composites" / digest.hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, band_path in enumerate(band_paths):
        target = folder / f"{number:07d}_{Path(band_path).stem}.png"
        if not target.exists():
            temporary = target.with_name(f"{target.stem}.{os.getpid()}.tmp.png")  # ranks may race
            Image.fromarray(rgb_composite(loader(band_path), band_names)).save(temporary)
            temporary.replace(target)
        paths.append(target)
    return paths


def read_eurosat_bands(location: Path, spec: DatasetSpec) -> MultispectralImages:
    """EuroSAT-MS (``location`` = the ``EuroSAT_MS`` folder): 13-band GeoTIFFs, 10 classes; RGB from
    the sibling ``EuroSAT_RGB`` tree, or composites when it is absent."""
    from fedvlm.data.formats.multispectral import read_eurosat_ms

    data = read_eurosat_ms(location)
    rgb = data.rgb_paths or composite_paths(data.paths, data.band_names, data.loader)
    return MultispectralImages(list(rgb), data.labels, [spec.classname(c) for c in data.class_names],
                               band_paths=list(data.paths), band_names=list(data.band_names), band_loader=data.loader)


# CORINE Level-3 label (BigEarthNet v1.0 metadata wording) -> BigEarthNet-19 class. Labels not
# listed are removed by the 19-class nomenclature (road and rail, port areas, airports, mineral
# extraction, dump and construction sites, green urban areas, sport and leisure, bare rock, burnt
# areas, glaciers, intertidal flats).
BIGEARTHNET19 = {
    "Continuous urban fabric": "Urban fabric", "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Non-irrigated arable land": "Arable land", "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops", "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops", "Annual crops associated with permanent crops": "Permanent crops",
    "Pastures": "Pastures", "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas", "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest", "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub", "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Inland marshes": "Inland wetlands", "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands", "Salines": "Coastal wetlands",
    "Water courses": "Inland waters", "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters", "Estuaries": "Marine waters", "Sea and ocean": "Marine waters",
}
BIGEARTHNET19_CLASSES = list(dict.fromkeys(BIGEARTHNET19.values()))


def to_bigearthnet19(labels: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """``[N, C]`` multi-hot over CORINE Level-3 names -> ``[N, 19]`` over BigEarthNet-19 (a class is
    present when any of its Level-3 labels is)."""
    mapped = np.zeros((len(labels), len(BIGEARTHNET19_CLASSES)), dtype=np.float32)
    for column, name in enumerate(class_names):
        if name in BIGEARTHNET19:
            target = BIGEARTHNET19_CLASSES.index(BIGEARTHNET19[name])
            mapped[:, target] = np.maximum(mapped[:, target], labels[:, column])
    return mapped, list(BIGEARTHNET19_CLASSES)


def read_bigearthnet_bands(location: Path, spec: DatasetSpec, nomenclature: str = "level3") -> MultispectralImages:
    """BigEarthNet-S2 patch folders (``location`` = ``BigEarthNet-v1.0``): 12 bands on the 10 m
    grid, multi-hot land-cover labels, RGB composites of B04/B03/B02."""
    from fedvlm.data.formats.multispectral import read_bigearthnet

    data = read_bigearthnet(location)
    labels, names = data.labels, list(data.class_names)
    if nomenclature == "19":
        labels, names = to_bigearthnet19(labels, names)
        keep = labels.sum(1) > 0  # patches whose every label the 19-class nomenclature removes
        if not keep.any():
            raise DataError(f"dataset {spec.name}: no patch of {location} has a BigEarthNet-19 label")
        labels = labels[keep]
        band_paths = [p for p, k in zip(data.paths, keep) if k]
    else:
        band_paths = list(data.paths)
    rgb = composite_paths(band_paths, data.band_names, data.loader)
    return MultispectralImages(rgb, labels.astype(np.float32), [spec.classname(n) for n in names],
                               band_paths=band_paths, band_names=list(data.band_names), band_loader=data.loader)
