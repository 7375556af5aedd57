"""The catalogue of the synthetic remote-sensing world: materials, object types, scene classes.

Everything here is data. A scene class is a background recipe plus a distribution over object
types (probability of being present, how many, how they are arranged); the sampler in
``layout.py`` reads it and the renderer in ``render.py`` draws it. Geometry is expressed in
*reference pixels* of a 64 x 64 image and scaled at render time, so one scene renders at any size.

Spectra are rough, qualitatively right surface reflectances for the 13 Sentinel-2 bands (water dark
in the near and short-wave infrared, vegetation bright in the near infrared, sand and soil bright
in the short-wave infrared); they are made up for simulation, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFERENCE_SIZE = 64  # geometry is laid out on a 64 x 64 grid and scaled to the render size

# Sentinel-2 MSI bands in EuroSAT's order (B8A after B08), with centre wavelengths in nm.
SENTINEL2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
SENTINEL2_WAVELENGTHS_NM: tuple[int, ...] = (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190)


@dataclass(frozen=True)
class Material:
    """A surface type. ``texture`` is (fine, coarse) relative brightness noise amplitudes."""

    name: str
    rgb: tuple[int, int, int]
    spectrum: tuple[float, ...]  # reflectance per SENTINEL2_BANDS entry
    texture: tuple[float, float]
    land_cover: str  # the BigEarthNet-style land-cover label this surface counts towards


#                      B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B10    B11   B12
MATERIALS: tuple[Material, ...] = (
    Material("water", (38, 66, 104),
             (0.08, 0.07, 0.06, 0.03, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.001, 0.005, 0.003),
             (0.03, 0.10), "Water bodies"),
    Material("grass", (96, 132, 64),
             (0.04, 0.05, 0.09, 0.06, 0.14, 0.28, 0.33, 0.35, 0.37, 0.35, 0.005, 0.25, 0.14),
             (0.06, 0.14), "Pastures"),
    Material("tree canopy", (38, 82, 42),
             (0.03, 0.04, 0.07, 0.04, 0.10, 0.30, 0.38, 0.42, 0.44, 0.41, 0.004, 0.20, 0.09),
             (0.14, 0.06), "Forests"),
    Material("crop", (128, 160, 72),
             (0.04, 0.05, 0.10, 0.07, 0.16, 0.34, 0.42, 0.46, 0.48, 0.45, 0.005, 0.27, 0.15),
             (0.05, 0.05), "Arable land"),
    Material("soil", (140, 108, 78),
             (0.08, 0.10, 0.14, 0.18, 0.21, 0.23, 0.25, 0.27, 0.28, 0.28, 0.010, 0.35, 0.30),
             (0.07, 0.12), "Arable land"),
    Material("sand", (214, 198, 150),
             (0.20, 0.25, 0.32, 0.38, 0.41, 0.43, 0.45, 0.46, 0.47, 0.46, 0.020, 0.50, 0.42),
             (0.04, 0.10), "Beaches, dunes, sands"),
    Material("concrete", (172, 170, 164),
             (0.18, 0.20, 0.22, 0.24, 0.25, 0.26, 0.27, 0.28, 0.28, 0.27, 0.020, 0.30, 0.28),
             (0.04, 0.06), "Industrial or commercial units"),
    Material("asphalt", (72, 72, 78),
             (0.06, 0.07, 0.08, 0.09, 0.09, 0.10, 0.10, 0.11, 0.11, 0.11, 0.005, 0.13, 0.12),
             (0.05, 0.04), "Road and rail networks"),
    Material("roof", (160, 84, 62),
             (0.10, 0.11, 0.13, 0.20, 0.22, 0.23, 0.24, 0.25, 0.25, 0.25, 0.010, 0.30, 0.27),
             (0.03, 0.00), "Urban fabric"),
    Material("metal", (222, 222, 226),
             (0.30, 0.32, 0.33, 0.34, 0.34, 0.35, 0.35, 0.35, 0.35, 0.34, 0.020, 0.30, 0.25),
             (0.02, 0.00), "Industrial or commercial units"),
    Material("court", (62, 122, 96),
             (0.06, 0.08, 0.12, 0.10, 0.13, 0.15, 0.16, 0.17, 0.17, 0.16, 0.005, 0.20, 0.15),
             (0.02, 0.00), "Sport and leisure facilities"),
    Material("solar glass", (34, 44, 86),
             (0.05, 0.05, 0.05, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.002, 0.05, 0.05),
             (0.03, 0.00), "Industrial or commercial units"),
    Material("pool water", (64, 172, 212),
             (0.15, 0.18, 0.14, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.005, 0.001, 0.005, 0.003),
             (0.02, 0.00), "Water bodies"),
    Material("paint", (238, 238, 232),
             (0.50, 0.52, 0.53, 0.54, 0.54, 0.54, 0.54, 0.54, 0.54, 0.53, 0.030, 0.48, 0.42),
             (0.01, 0.00), "Road and rail networks"),
)
MATERIAL_INDEX: dict[str, int] = {m.name: i for i, m in enumerate(MATERIALS)}
LAND_COVER_LABELS: tuple[str, ...] = tuple(sorted({m.land_cover for m in MATERIALS}))


@dataclass(frozen=True)
class ObjectType:
    """A kind of object that can appear in a scene and be labelled (multi-label, detection).

    ``materials`` are the surfaces its pixels may have; ``nouns`` are the (singular, plural)
    words captions use for it (the first pair is its display name).
    """

    name: str  # identifier, used as the VOC class name and the ImageFolder-style key
    nouns: tuple[tuple[str, str], ...]
    materials: tuple[str, ...]
    supercategory: str

    @property
    def display_name(self) -> str:
        return self.nouns[0][0]


OBJECT_TYPES: tuple[ObjectType, ...] = (
    ObjectType("airplane", (("airplane", "airplanes"), ("plane", "planes")), ("metal", "paint"), "vehicle"),
    ObjectType("ship", (("ship", "ships"), ("boat", "boats")), ("metal", "paint", "roof"), "vehicle"),
    ObjectType("car", (("car", "cars"),), ("metal", "roof", "solar glass", "paint"), "vehicle"),
    ObjectType("truck", (("truck", "trucks"),), ("metal", "roof", "paint"), "vehicle"),
    ObjectType("tree", (("tree", "trees"),), ("tree canopy",), "vegetation"),
    ObjectType("building", (("building", "buildings"), ("house", "houses")), ("roof", "concrete", "metal"), "structure"),
    ObjectType("storage_tank", (("storage tank", "storage tanks"), ("tank", "tanks")), ("metal", "concrete"), "structure"),
    ObjectType("road", (("road", "roads"),), ("asphalt", "paint"), "infrastructure"),
    ObjectType("runway", (("runway", "runways"),), ("concrete", "paint", "asphalt"), "infrastructure"),
    ObjectType("river", (("river", "rivers"),), ("water",), "water"),
    ObjectType("bridge", (("bridge", "bridges"),), ("concrete", "paint"), "infrastructure"),
    ObjectType("pool", (("swimming pool", "swimming pools"), ("pool", "pools")), ("pool water", "paint"), "structure"),
    ObjectType("tennis_court", (("tennis court", "tennis courts"),), ("court", "paint"), "sports"),
    ObjectType("baseball_diamond", (("baseball field", "baseball fields"), ("baseball diamond", "baseball diamonds")),
               ("soil", "grass", "paint"), "sports"),
    ObjectType("crop_field", (("crop field", "crop fields"),), ("crop", "soil"), "vegetation"),
    ObjectType("pond", (("pond", "ponds"),), ("water",), "water"),
    ObjectType("pier", (("pier", "piers"),), ("concrete",), "infrastructure"),
    ObjectType("solar_panel", (("solar panel", "solar panels"),), ("solar glass", "paint"), "structure"),
    ObjectType("sand_bunker", (("sand bunker", "sand bunkers"), ("bunker", "bunkers")), ("sand",), "sports"),
)
OBJECT_INDEX: dict[str, int] = {o.name: i for i, o in enumerate(OBJECT_TYPES)}


@dataclass(frozen=True)
class ObjectSpec:
    """How one object type appears in a scene class: P(present), count range, arrangement."""

    probability: float
    count: tuple[int, int]  # inclusive range of instances when present
    arrangement: str  # a placer arrangement (see layout.py), also phrased in captions


@dataclass(frozen=True)
class SceneClass:
    """A scene class: its name (words used in prompts and captions), background and objects."""

    name: str  # "dense residential"; folder names are name.replace(" ", "_")
    background: str  # a background recipe in layout.py
    objects: dict[str, ObjectSpec] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


def _spec(probability: float, low: int, high: int, arrangement: str) -> ObjectSpec:
    return ObjectSpec(probability, (low, high), arrangement)


SCENE_CLASSES: tuple[SceneClass, ...] = (
    SceneClass("airport", "airport", {
        "runway": _spec(1.0, 1, 1, "across"),
        "airplane": _spec(0.95, 1, 5, "rows"),
        "building": _spec(0.6, 1, 3, "apron_edge"),
        "truck": _spec(0.3, 1, 3, "scattered_on_apron"),
        "car": _spec(0.3, 1, 4, "scattered_on_apron"),
        "road": _spec(0.4, 1, 1, "across"),
    }),
    SceneClass("harbor", "shore_concrete", {
        "pier": _spec(0.9, 1, 4, "from_shore"),
        "ship": _spec(0.95, 2, 8, "moored"),
        "storage_tank": _spec(0.3, 1, 4, "cluster_on_land"),
        "building": _spec(0.5, 1, 3, "on_land"),
        "truck": _spec(0.25, 1, 3, "on_land"),
        "car": _spec(0.3, 1, 5, "on_land"),
    }),
    SceneClass("dense residential", "urban", {
        "road": _spec(0.95, 2, 3, "grid"),
        "building": _spec(1.0, 14, 26, "blocks"),
        "car": _spec(0.8, 3, 12, "along_road"),
        "tree": _spec(0.5, 2, 8, "scattered"),
        "pool": _spec(0.1, 1, 2, "near_buildings"),
    }),
    SceneClass("sparse residential", "grass", {
        "road": _spec(0.7, 1, 1, "across"),
        "building": _spec(1.0, 3, 8, "scattered"),
        "tree": _spec(0.95, 6, 20, "scattered"),
        "pool": _spec(0.5, 1, 3, "near_buildings"),
        "car": _spec(0.4, 1, 4, "along_road"),
    }),
    SceneClass("forest", "forest_floor", {
        "tree": _spec(1.0, 60, 110, "dense"),
        "road": _spec(0.15, 1, 1, "across"),
        "pond": _spec(0.1, 1, 1, "small"),
    }),
    SceneClass("farmland", "soil", {
        "crop_field": _spec(1.0, 3, 8, "parcels"),
        "road": _spec(0.4, 1, 1, "across"),
        "tree": _spec(0.4, 3, 10, "row"),
        "building": _spec(0.2, 1, 2, "scattered"),
    }),
    SceneClass("beach", "shore_sand", {
        "tree": _spec(0.3, 2, 8, "on_land"),
        "building": _spec(0.3, 1, 4, "on_land"),
        "pool": _spec(0.15, 1, 2, "near_buildings"),
        "ship": _spec(0.2, 1, 3, "sailing"),
        "car": _spec(0.15, 1, 3, "on_land"),
    }),
    SceneClass("parking lot", "asphalt", {
        "car": _spec(1.0, 16, 40, "rows"),
        "truck": _spec(0.4, 1, 4, "rows"),
        "building": _spec(0.4, 1, 2, "edge"),
        "tree": _spec(0.3, 2, 6, "row"),
        "solar_panel": _spec(0.1, 1, 3, "rows"),
    }),
    SceneClass("river", "grass", {
        "river": _spec(1.0, 1, 1, "across"),
        "tree": _spec(0.8, 5, 20, "along_river"),
        "bridge": _spec(0.4, 1, 1, "over_river"),
        "road": _spec(0.3, 1, 1, "across"),
        "crop_field": _spec(0.2, 1, 3, "parcels"),
        "building": _spec(0.2, 1, 3, "scattered"),
    }),
    SceneClass("industrial area", "concrete", {
        "building": _spec(1.0, 2, 6, "large"),
        "storage_tank": _spec(0.7, 2, 8, "cluster"),
        "road": _spec(0.8, 1, 2, "across"),
        "truck": _spec(0.6, 1, 6, "scattered"),
        "car": _spec(0.4, 1, 6, "scattered"),
        "solar_panel": _spec(0.2, 1, 4, "rows"),
    }),
    SceneClass("lake", "grass", {
        "pond": _spec(1.0, 1, 1, "large"),
        "tree": _spec(0.8, 4, 20, "around_water"),
        "ship": _spec(0.2, 1, 2, "sailing"),
        "building": _spec(0.2, 1, 3, "scattered"),
        "road": _spec(0.3, 1, 1, "across"),
    }),
    SceneClass("desert", "dunes", {
        "road": _spec(0.3, 1, 1, "across"),
        "truck": _spec(0.1, 1, 2, "along_road"),
        "building": _spec(0.1, 1, 2, "scattered"),
        "solar_panel": _spec(0.15, 2, 6, "rows"),
    }),
    SceneClass("sports field", "grass", {
        "tennis_court": _spec(0.7, 1, 4, "row"),
        "baseball_diamond": _spec(0.6, 1, 2, "scattered"),
        "building": _spec(0.3, 1, 2, "edge"),
        "tree": _spec(0.5, 2, 10, "scattered"),
        "car": _spec(0.3, 1, 6, "scattered"),
        "road": _spec(0.4, 1, 1, "across"),
    }),
    SceneClass("freeway", "grass", {
        "road": _spec(1.0, 2, 2, "carriageways"),
        "car": _spec(0.95, 4, 18, "along_road"),
        "truck": _spec(0.6, 1, 5, "along_road"),
        "tree": _spec(0.5, 3, 12, "scattered"),
        "bridge": _spec(0.2, 1, 1, "over_road"),
    }),
    SceneClass("golf course", "fairway", {
        "sand_bunker": _spec(0.9, 1, 5, "scattered"),
        "pond": _spec(0.6, 1, 2, "small"),
        "tree": _spec(0.9, 8, 30, "clusters"),
        "building": _spec(0.15, 1, 2, "edge"),
        "car": _spec(0.1, 1, 3, "scattered"),
    }),
    SceneClass("meadow", "meadow", {
        "tree": _spec(0.4, 1, 4, "scattered"),
        "road": _spec(0.1, 1, 1, "across"),
    }),
)
SCENE_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(SCENE_CLASSES)}

MATERIAL_SPECTRA = np.array([m.spectrum for m in MATERIALS], dtype=np.float32)  # [num_materials, 13]
MATERIAL_TEXTURE = np.array([m.texture for m in MATERIALS], dtype=np.float32)  # [num_materials, 2]


@dataclass(frozen=True)
class World:
    """The catalogue as one object: what a generated dataset's labels index into."""

    scene_classes: tuple[SceneClass, ...] = SCENE_CLASSES
    object_types: tuple[ObjectType, ...] = OBJECT_TYPES
    materials: tuple[Material, ...] = MATERIALS
    bands: tuple[str, ...] = SENTINEL2_BANDS

    @property
    def scene_names(self) -> list[str]:
        return [c.name for c in self.scene_classes]

    @property
    def object_names(self) -> list[str]:
        return [o.name for o in self.object_types]

    def scene(self, name: str) -> SceneClass:
        return self.scene_classes[SCENE_INDEX[name]]

    def object_type(self, name: str) -> ObjectType:
        return self.object_types[OBJECT_INDEX[name]]


WORLD = World()
