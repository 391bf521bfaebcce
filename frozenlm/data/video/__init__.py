"""Video clips for action recognition: ``decode`` (PyAV / decord), ``labels`` (SSv2, Kinetics, list files),
``transforms`` (VideoMAE's TSN / dense frame sampling, clip-wide crops and RandAugment), ``dataset``
(``VideoClipDataset``, ``build_video_dataset``). Test time uses several temporal views x spatial crops."""
from __future__ import annotations

from .dataset import VIDEO_DATASETS, VideoClipDataset, build_video_dataset, skip_none_collate, video_items
from .decode import VideoDecodeError, VideoTooShortError, decode_frames
from .labels import read_kinetics_csv, read_ssv2_labels, read_ssv2_split, read_video_list
from .transforms import dense_indices, spatial_crops, tsn_indices

__all__ = ["VIDEO_DATASETS", "VideoClipDataset", "VideoDecodeError", "VideoTooShortError", "build_video_dataset",
           "decode_frames", "dense_indices", "read_kinetics_csv", "read_ssv2_labels", "read_ssv2_split",
           "read_video_list", "skip_none_collate", "spatial_crops", "tsn_indices", "video_items"]
