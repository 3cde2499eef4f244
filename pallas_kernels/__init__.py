"""Pallas kernels with pure-XLA fallbacks (RoI-align / RoI-pool)."""
from pallas_kernels.roi_align import fpn_levels, multilevel_roi_align, roi_align, roi_pool

__all__ = ["fpn_levels", "multilevel_roi_align", "roi_align", "roi_pool"]
