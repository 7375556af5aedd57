"""Multi-domain datasets: every image carries its domain as well as its class.

* DomainNet ``domainnet/{<domain>/<class>/<image>.jpg, <domain>_train.txt, <domain>_test.txt}``:
  the official lists hold ``<domain>/<class>/<image>.jpg <label>`` per line, with one label
  numbering shared by all six domains (clipart, infograph, painting, quickdraw, real, sketch);
  the domains whose lists are present are read.
* Office-Caltech10 ``office_caltech_10/<domain>/<class>/<image>`` (domains amazon, caltech, dslr,
  webcam; 10 classes): an ImageFolder per domain, no official split.
* ``synthetic_domains/<domain>/<class>/<image>.png``: the synthetic world's client styles as
  domains (``style_<k>``), written by ``fedvlm generate --layouts synthetic_domains``.

Readers return ``(paths, labels, classnames, domains, domain_names, splits)``. Classes are shared
by all domains of the dataset even when only some domains are read (``domainnet_clipart``), so a
model trained on one domain is scored on another in the same label space.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.folders import IMAGE_SUFFIXES
from fedvlm.data.formats.common import require_dir, require_file, require_images
from fedvlm.errors import DataError
from fedvlm.files import read_lines

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
OFFICE_CALTECH_DOMAINS = ("amazon", "caltech", "dslr", "webcam")


def read_domainnet(location: Path, domains: tuple[str, ...] | None, expected: str) -> tuple:
    """DomainNet from its official ``<domain>_{train,test}.txt`` lists.

    ``domains`` None: every domain whose lists are present (a partial download is a smaller
    DomainNet, in canonical domain order); else those domains, which must be present. The label
    space is read from every present domain's lists, so ``domainnet_clipart`` and ``domainnet``
    name the classes alike.
    """
    require_dir(location, expected)
    present = tuple(d for d in DOMAINNET_DOMAINS if (location / f"{d}_train.txt").is_file())
    chosen = present if domains is None else domains
    if not chosen:
        raise DataError(f"DomainNet {location} has no <domain>_train.txt for any of {', '.join(DOMAINNET_DOMAINS)}; "
                        f"expected {expected}")
    paths: list[Path] = []
    labels: list[int] = []
    domain_of: list[int] = []
    names: dict[int, str] = {}
    rows: dict[str, list[int]] = {"train": [], "test": []}
    for domain in dict.fromkeys(chosen + present):  # chosen first; the others only for class names
        kept = domain in chosen
        if kept:
            require_dir(location / domain, expected)
        for split in ("train", "test"):
            listing = require_file(location / f"{domain}_{split}.txt", expected)
            for number, line in enumerate(read_lines(listing, "DomainNet list", "<domain>/<class>/<image> <label>"), 1):
                relative, _, label = line.rpartition(" ")
                parts = relative.split("/")
                if not label.isdigit() or len(parts) != 3 or parts[0] != domain or ".." in parts:
                    raise DataError(f"DomainNet list {listing}:{number} is {line!r}; expected "
                                    f"'{domain}/<class>/<image> <label>'")
                if names.setdefault(int(label), parts[1]) != parts[1]:
                    raise DataError(f"DomainNet list {listing}:{number}: label {label} is class {parts[1]!r} here "
                                    f"but {names[int(label)]!r} elsewhere; expected one class per label")
                if kept:
                    rows[split].append(len(paths))
                    paths.append(location / relative)
                    labels.append(int(label))
                    domain_of.append(chosen.index(domain))
    if not paths:
        raise DataError(f"DomainNet lists of {', '.join(chosen)} under {location} list no images; expected {expected}")
    if sorted(names) != list(range(len(names))):
        gap = min(set(range(max(names) + 1)) - set(names))
        raise DataError(f"DomainNet {location}: no listed image has label {gap}; expected labels 0..C-1")
    require_images(paths, f"the DomainNet lists under {location}", expected)
    return (paths, np.asarray(labels, dtype=np.int64), [names[c] for c in range(len(names))],
            np.asarray(domain_of, dtype=np.int64), list(chosen),
            {split: np.asarray(r, dtype=np.int64) for split, r in rows.items()})


def read_domain_folders(location: Path, all_domains: tuple[str, ...] | None, domains: tuple[str, ...] | None,
                        expected: str) -> tuple:
    """``<location>/<domain>/<class>/<image>`` for each of ``domains`` (None: every domain
    folder). Every domain of ``all_domains`` (None: the folders present) must hold the same class
    folders: a class missing from one domain would renumber the classes of that domain alone.
    A class folder may be empty (that domain has no image of the class)."""
    require_dir(location, expected)
    present = sorted(p.name for p in location.iterdir() if p.is_dir() and not p.name.startswith("."))
    all_domains = tuple(all_domains or present)
    if not all_domains:
        raise DataError(f"dataset folder {location} has no domain folders; expected {expected}")
    classes = None
    for domain in all_domains:
        folder = require_dir(location / domain, expected)
        found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            classes = found
        elif found != classes:
            odd = sorted(set(found) ^ set(classes)) or ["(none)"]
            raise DataError(f"domain folder {folder} holds other class folders than {location / all_domains[0]} "
                            f"({odd[0]} is in one only); expected the same classes in every domain")
    if not classes:
        raise DataError(f"domain folder {location / all_domains[0]} has no class folders; expected {expected}")
    chosen = tuple(domains or all_domains)
    paths, labels, domain_of = [], [], []
    for index, domain in enumerate(chosen):
        start = len(paths)
        for label, name in enumerate(classes):  # a class may be absent from one domain (its folder empty)
            files = sorted(p for p in (location / domain / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [label] * len(files)
            domain_of += [index] * len(files)
        if len(paths) == start:
            raise DataError(f"domain folder {location / domain} holds no images; expected {expected}")
    return (paths, np.asarray(labels, dtype=np.int64), classes, np.asarray(domain_of, dtype=np.int64),
            list(chosen), None)


class DomainFolderWriter:
    """Writes synthetic scenes as ``<root>/<domain>/<class>/<image>`` with the scene's client
    style as its domain (``domain_names[style_id]``); with ``lists`` (DomainNet) also the
    ``<domain>_{train,test}.txt`` files."""

    def __init__(self, root: Path, domain_names: list[str], classnames: list[str], lists: bool = False,
                 suffix: str = ".png"):
        self.root, self.domain_names, self.classnames = Path(root), domain_names, classnames
        self.lists = {(d, s): [] for d in domain_names for s in ("train", "test")} if lists else None
        self.suffix = suffix

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        domain = self.domain_names[scene.style_id % len(self.domain_names)]
        folder = scene.scene_class.replace(" ", "_")
        relative = f"{domain}/{folder}/{domain}_{sample_id:06d}{self.suffix}"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.rgb).save(path, quality=95) if self.suffix == ".jpg" else \
            Image.fromarray(scene.rgb).save(path, compress_level=1)
        if self.lists is not None:
            self.lists[domain, "train" if split == "train" else "test"].append(f"{relative} {scene.label}")
        return relative

    def close(self) -> None:
        # every domain gets every class folder (the readers require it), empty ones included
        for domain in self.domain_names:
            for name in self.classnames:
                (self.root / domain / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        for (domain, split), lines in (self.lists or {}).items():
            (self.root / f"{domain}_{split}.txt").write_text("".join(line + "\n" for line in lines))
