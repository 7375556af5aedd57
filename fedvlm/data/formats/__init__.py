"""Writers and readers of real dataset layouts (ImageFolder, VOC2007, COCO, RSICD/RSITMD, EuroSAT-MS,
BigEarthNet). Readers work on the real datasets; writers lay out the synthetic world the same way."""

from fedvlm.data.formats.captions import CaptionWriter, read_caption_dataset
from fedvlm.data.formats.coco import COCOWriter, read_coco
from fedvlm.data.formats.common import CaptionSet, MultiLabelSet, MultispectralSet, load_rgb
from fedvlm.data.formats.imagefolder import ImageFolderWriter, read_imagefolder
from fedvlm.data.formats.multispectral import (
    BigEarthNetWriter,
    EuroSATWriter,
    load_bigearthnet_patch,
    load_eurosat_tiff,
    read_bigearthnet,
    read_eurosat_ms,
)
from fedvlm.data.formats.voc import VOCWriter, read_voc2007

__all__ = [
    "CaptionSet", "MultiLabelSet", "MultispectralSet", "load_rgb",
    "ImageFolderWriter", "read_imagefolder", "VOCWriter", "read_voc2007", "COCOWriter", "read_coco",
    "CaptionWriter", "read_caption_dataset", "EuroSATWriter", "read_eurosat_ms", "load_eurosat_tiff",
    "BigEarthNetWriter", "read_bigearthnet", "load_bigearthnet_patch",
]
