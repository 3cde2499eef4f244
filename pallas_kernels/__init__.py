"""Pallas kernels with pure-XLA fallbacks. RoI-align / RoI-pool: `pallas_kernels.roi_align`
(import the functions from that module; the package does not re-export them, so the module name
is not shadowed by the function of the same name)."""
