"""TFDS builders for crowd counting; importing this package registers them.

    shanghaitech/part_a, shanghaitech/part_b, ucf_cc_50, jhu_crowd, nwpu_crowd,
    synthetic_crowd

Build with `python -m tfds_crowd.build NAME [--manual_dir DIR] [--data_dir DIR]` (no
TensorFlow needed), with `tfds_crowd.build.build(...)` from Python, or with the TFDS CLI:
`tfds build NAME --imports tfds_crowd --manual_dir DIR`.

Your own pictures and point annotations (LabelMe, CVAT, Label Studio, VIA, COCO, text
lists, CSV, dot maps, cclabeler, ShanghaiTech .mat): `python -m tfds_crowd.build folder
--manual_dir DIR --name NAME`, or `tfds_crowd.build_folder(DIR, NAME)`. Such datasets are
read from disk by name and never registered.
"""

from tfds_crowd.annotation_formats import FORMATS
from tfds_crowd.folder import build_folder
from tfds_crowd.jhu_crowd import JhuCrowd
from tfds_crowd.nwpu_crowd import NwpuCrowd
from tfds_crowd.shanghaitech import Shanghaitech
from tfds_crowd.synthetic_crowd import SyntheticCrowd
from tfds_crowd.ucf_cc_50 import UcfCc50, fold_splits

BUILDERS = {
    builder.name: builder
    for builder in (Shanghaitech, UcfCc50, JhuCrowd, NwpuCrowd, SyntheticCrowd)
}

__all__ = [
    "BUILDERS",
    "FORMATS",
    "JhuCrowd",
    "NwpuCrowd",
    "Shanghaitech",
    "SyntheticCrowd",
    "UcfCc50",
    "build_folder",
    "fold_splits",
]
