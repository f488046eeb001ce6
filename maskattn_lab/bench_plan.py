"""What the benchmark measures: the schedule, and the variants with their labels
(host-free, for the command line and the measurements alike)."""

STEPS = 30              # schedule length (Endo: 30% of the steps guided)
GUIDED_PERCENT = 0.3
CFG = 5.0
VARIANTS = ("gating", "self-gating", "visualized", "swapping", "paint-with-words", "paint-and-suppress",
            "guidance-all", "guidance-mid", "guidance-encoder")
# Asked for by name only: guidance keeping every activation for its backward (what it did
# before it recomputed them), which at 1024 px does not fit a 24 GiB CPU machine in fp32.
EXTRA_VARIANTS = ("guidance-all-kept",)
LABELS = {
    "gating": "Apply Masked Cross-Attention (mid-resolution)",
    "self-gating": "  + self-attention gating",
    "visualized": "  after Visualize Gates ran on it",
    "swapping": "Region Mask Guidance: swapping, all sites",
    "paint-with-words": "Region Mask Guidance: paint-with-words, all",
    "paint-and-suppress": "Region Mask Guidance: paint-and-suppress, all, whole run",
    "guidance-all": "Region Mask Guidance: guidance, all sites",
    "guidance-mid": "Region Mask Guidance: guidance, mid-resolution",
    "guidance-encoder": "Region Mask Guidance: guidance, encoder",
    "guidance-all-kept": "  guidance, all sites, activations kept",
}
