"""The one-pass evaluation engine: predictions, Grad-CAM and HiResCAM, streaming group statistics, gallery.

Plain results only (numpy arrays and numbers); figures, logging and the report consume them.
"""

from heimer_mlflow.engine.gallery import CaseGallery, GalleryCase
from heimer_mlflow.engine.gradcam import Attribution, GradCam3d, conv_layers, resolve_layer
from heimer_mlflow.engine.agreement import spearman
from heimer_mlflow.engine.result import EngineResult, EngineStopped, SanityResult
from heimer_mlflow.engine.run import pick_device, run_engine
from heimer_mlflow.engine.stats import GroupMaps, GroupStats, rank_channels
from heimer_mlflow.meta import CAM_METHODS, check_cam_method

__all__ = [
    "CAM_METHODS", "Attribution", "CaseGallery", "EngineResult", "EngineStopped", "GalleryCase", "GradCam3d",
    "GroupMaps", "GroupStats", "SanityResult", "check_cam_method", "conv_layers",
    "pick_device", "rank_channels", "resolve_layer", "run_engine", "spearman",
]
