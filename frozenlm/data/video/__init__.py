"""Video clips for action recognition: ``decode`` (PyAV, seeking to what the sampler needs, or decord),
``labels`` (SSv2, Kinetics, list files), ``files`` (split folders, the missing-video check),
``transforms`` (VideoMAE's TSN / dense frame sampling, clip-wide crops and RandAugment), ``dataset``
(``VideoClipDataset``, ``build_video_dataset``, VideoMAE's repeated sampling). Test time uses several
temporal views x spatial crops."""
from __future__ import annotations

from .dataset import (VIDEO_DATASETS, VideoClipDataset, build_video_dataset, flatten_samples,
                      repeated_sample_collate, skip_none_collate, video_items)
from .decode import VideoDecodeError, VideoTooShortError, decode_frames
from .files import split_video_dir
from .labels import KINETICS_LAYOUTS, kinetics_layout, read_kinetics_csv, read_ssv2_labels, read_ssv2_split, read_video_list
from .transforms import dense_indices, spatial_crops, tsn_indices

__all__ = ["KINETICS_LAYOUTS", "VIDEO_DATASETS", "VideoClipDataset", "VideoDecodeError", "VideoTooShortError",
           "build_video_dataset", "decode_frames", "dense_indices", "flatten_samples",
           "kinetics_layout", "read_kinetics_csv", "read_ssv2_labels", "read_ssv2_split", "read_video_list",
           "repeated_sample_collate", "skip_none_collate", "spatial_crops", "split_video_dir", "tsn_indices",
           "video_items"]
