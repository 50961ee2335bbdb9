"""STPM: Student-Teacher Feature Pyramid Matching (Wang et al., BMVC 2021)."""
from stpm_edge.models.stpm.config import STPMConfig
from stpm_edge.models.stpm.head import AnomalyMapHead, l2_normalize, level_distance
from stpm_edge.models.stpm.loss import stpm_loss, stpm_loss_per_image
from stpm_edge.models.stpm.model import STPM

__all__ = ["STPM", "STPMConfig", "AnomalyMapHead", "level_distance", "l2_normalize", "stpm_loss",
           "stpm_loss_per_image"]
