"""Detection metrics over plain per-image records: COCO's (pycocotools COCOeval) and VOC07's."""

from prunecli.metrics.coco import coco_metrics, coco_voc_settings_map
from prunecli.metrics.types import ImageAnnotations, ImageDetections
from prunecli.metrics.voc import voc07_map

__all__ = ["ImageAnnotations", "ImageDetections", "coco_metrics", "coco_voc_settings_map",
           "voc07_map"]
