"""Offline data generators, one module per task (video: moving shapes, pointcloud: mesh shapes,
motion: AV2-format driving scenes, sqa3d: furnished rooms); each writes or caches real formats."""
