"""Datasets for frozenlm tasks. Image classification (re-exported here): ``image``, ``imagenet_variants``,
``tarshards``, ``transforms``; the other tasks' data: ``pointcloud``, ``video/``, ``motion/``, ``vqa``,
``retrieval``, ``sqa3d``; offline generators: ``synthetic/``."""

from .image import (DATASET_NAMES, FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, FashionMNIST, LabelledSubset,
                    build_image_dataset, build_image_folder, build_image_transform, get_class_names, get_num_classes,
                    read_idx_gz)
from .imagenet_variants import (IMAGENET_C_CORRUPTIONS, ImageNetCConcat, WnidImageFolder, build_imagenet_subset,
                                enumerate_imagenet_c, imagenet_c_datasets, imagenet_wnids, mask_logits,
                                summarize_imagenet_c, wnids_to_indices)
from .tarshards import TarShardDataset, find_shards
from .transforms import build_loss, build_mixup, imagenet_transform, small_image_transform

__all__ = [
    "DATASET_NAMES", "FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "FashionMNIST", "LabelledSubset",
    "build_image_dataset", "build_image_folder", "build_image_transform", "get_class_names", "get_num_classes",
    "read_idx_gz", "IMAGENET_C_CORRUPTIONS", "ImageNetCConcat", "WnidImageFolder", "build_imagenet_subset",
    "enumerate_imagenet_c", "imagenet_c_datasets", "imagenet_wnids", "mask_logits", "summarize_imagenet_c",
    "wnids_to_indices", "TarShardDataset", "find_shards", "build_loss", "build_mixup", "imagenet_transform",
    "small_image_transform",
]
