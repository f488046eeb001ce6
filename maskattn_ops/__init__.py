"""The math of MaskAttn's modes at one attention site: pure torch and einops, no host.

Nothing here imports ComfyUI, so every module runs and is tested without it; the host
adapters (``nodes/``) turn node inputs into these objects and install them.

- ``attention``: attention with an additive logit bias (fused path and explicit reference
  path, which must agree).
- ``sites``: cross-attention sites, the named site sets, what one site call knows.
- ``run_state``: the typed per-sampling-run state that site calls share.
- ``regions``: regions bound to words (masks, boxes, word positions), masks on a site's grid.
- ``region_attention``: masked-attention swapping and paint-with-words (Endo's baselines).
- ``guidance``: Endo's masked-attention loss over one guidance forward.
- ``gate_head``: MaskAttn-SDXL's gate head and its gate (straight-through, bias, product).
- ``gate_providers``: the learned gates as site providers (cross- and self-attention).
- ``heads``: a set of gate heads and its safetensors file format.
- ``fingerprint``: which model a set of heads was made for (samples of the weights they read).
- ``heatmaps``: maps -> labelled heatmap tiles (Visualize Gates' picture).
"""
