"""The lab: everything that trains, evaluates and benchmarks MaskAttn, beside the product
(``comfyui_maskattn``: ``nodes/`` and ``maskattn_ops/``) and never imported by it.

Importable as ``maskattn_lab`` in the project's venv (scripts/setup.sh adds it with a
path file). Modules that need the host call ``host.import_host()`` before importing
``comfy``; the rest (shapes, scoring, workflow_api, cli) need neither host nor torch
beyond numpy/PIL.

- host: find and import the ComfyUI host (scripts, benchmarks, tests).
- cli: argument parsers with defaults shown; logging through tqdm.
- shapes, scoring: the rendered-shapes data set and its exact scorer.
- shapes_model, train_shapes_model: the shapes demo model's build-and-save half and trainer.
- head_data, train_heads, inspect_heads: the gate heads' COCO data and demo models, the
  training command (its loop and folder reader are the product's, shared with Train
  MaskAttn Heads: nodes/head_training.py, nodes/training_data.py), and inspection.
- evaluate_shapes, kind_errors: the evaluation runner over held-out scenes, and its
  breakdown of wrong kinds.
- bench_steps, bench_sdxl: speed and memory of every mode, patched vs plain.
- workflow_api, comfy_server, run_workflows, make_workflows: the shipped templates, their
  conversion, and the main job that runs them on a real ComfyUI server.
"""
