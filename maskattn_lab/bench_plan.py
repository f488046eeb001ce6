"""What the benchmark measures: the schedule, and the variants with their labels
(host-free, for the command line and the measurements alike)."""

STEPS = 30              # schedule length (Endo: 30% of the steps guided)
GUIDED_PERCENT = 0.3
CFG = 5.0
VARIANTS = ("gating", "self-gating", "visualized", "swapping", "paint-with-words",
            "guidance-all", "guidance-mid", "guidance-encoder")
LABELS = {
    "gating": "Apply Masked Cross-Attention (mid-resolution)",
    "self-gating": "  + self-attention gating",
    "visualized": "  after Visualize Gates ran on it",
    "swapping": "Region Mask Guidance: swapping, all sites",
    "paint-with-words": "Region Mask Guidance: paint-with-words, all",
    "guidance-all": "Region Mask Guidance: guidance, all sites",
    "guidance-mid": "Region Mask Guidance: guidance, mid-resolution",
    "guidance-encoder": "Region Mask Guidance: guidance, encoder",
}
