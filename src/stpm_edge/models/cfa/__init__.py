"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee, Song 2022)."""
from stpm_edge.models.cfa.config import CFAConfig
from stpm_edge.models.cfa.loss import hypersphere_loss_per_image, init_memory_bank
from stpm_edge.models.cfa.model import CFA

__all__ = ["CFA", "CFAConfig", "hypersphere_loss_per_image", "init_memory_bank"]
