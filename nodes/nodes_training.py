"""Training gate heads inside ComfyUI, made the way the host's own training nodes are
(comfy_extras/nodes_train.py): Load MaskAttn Training Set (a folder of image + caption
pairs, optional masks) and Train MaskAttn Heads (MODEL + CLIP + VAE + pairs -> HEADS
saved into models/maskattn, the host's progress bar, a LOSS_MAP for its Plot Loss Graph,
interruptible and resumable). The loop is the one scripts/train_heads.py runs."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..maskattn_ops.gate_head import GATE_MODES
from ..maskattn_ops.heads import load_heads, save_heads
from .head_training import HeadTrainer, TrainingSettings
from .model_folders import HEADS_FOLDER
from .nodes_gating import Heads
from .training_data import DataError, Sample, pairs_from_folder
from .widget_hints import newer_schema_fields

log = logging.getLogger(__name__)

CATEGORY = "MaskAttn/training"
TrainingSetType = io.Custom("MASKATTN_TRAINING_SET")
LossMap = io.Custom("LOSS_MAP")          # the host's type: its Plot Loss Graph reads {"loss": [...]}
# Training sets that ship with the extension; combo values are stored by workflows.
SHIPPED_SETS = {"[demo] shapes": Path(__file__).resolve().parent.parent / "weights" / "shapes_training_set"}
CHECKPOINT_EVERY = 50                    # steps between resume files (and on interruption)
HEADS_NAME = re.compile(r"[\w][\w .-]*")


@dataclass(frozen=True)
class TrainingSet:
    name: str
    samples: list[Sample]

    @property
    def has_masks(self) -> bool:
        return any(s.masks for s in self.samples)


def training_set_folders() -> list[str]:
    return [*SHIPPED_SETS, *folder_paths.get_input_subfolders()]


class MaskAttnLoadTrainingSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnLoadTrainingSet",
            display_name="Load MaskAttn Training Set",
            category=CATEGORY,
            description=(
                "Image + caption pairs for Train MaskAttn Heads, from a folder under input/: "
                "x.png with its caption in x.txt, and optionally x.masks.json, "
                '{"phrase of the caption": "mask.png", ...}, for mask supervision. Images without '
                "a caption are skipped. '[demo] shapes' ships with the extension: 64 rendered "
                "scenes for the demo model."),
            inputs=[
                io.Combo.Input("folder", options=training_set_folders(),
                               tooltip="A folder under ComfyUI's input/ (or the shipped demo set)."),
            ],
            outputs=[TrainingSetType.Output(display_name="TRAINING_SET",
                                            tooltip="The pairs (read when training; checked now).")],
            **newer_schema_fields(search_aliases=["maskattn dataset", "heads training data"]),
        )

    @classmethod
    def execute(cls, folder: str) -> io.NodeOutput:
        path = SHIPPED_SETS.get(folder) or Path(folder_paths.get_input_directory()) / folder
        try:
            samples = pairs_from_folder(path)
        except DataError as e:
            raise ValueError(f"Load MaskAttn Training Set (folder): {e}") from None
        masked = sum(bool(s.masks) for s in samples)
        log.info("Load MaskAttn Training Set: %d pairs from %s (%d with masks)", len(samples), path, masked)
        return io.NodeOutput(TrainingSet(folder, samples))


class MaskAttnTrainHeads(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnTrainHeads",
            display_name="Train MaskAttn Heads",
            category=CATEGORY,
            description=(
                "Trains MaskAttn-SDXL gate heads for this MODEL (arXiv 2509.15357): the model stays "
                "frozen, only the small heads learn, with the diffusion loss on the training set "
                "(plus mask supervision where the set has masks and mask_weight > 0; beyond the "
                "paper). Saves models/maskattn/<heads_name>.safetensors (for Load MaskAttn Heads) "
                "and returns the heads. Cancelling keeps a resume file; queueing again with resume on "
                "continues from it. The same data, settings and seed give the same heads."),
            inputs=[
                io.Model.Input("model", tooltip="The model to train heads for (stays unchanged)."),
                io.Clip.Input("clip", tooltip="The model's text encoders: encode the captions."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the images."),
                TrainingSetType.Input("training_set", tooltip="From Load MaskAttn Training Set."),
                io.String.Input("heads_name", default="my_maskattn_heads",
                                tooltip="File name in models/maskattn (an existing file of that name is replaced)."),
                io.Int.Input("steps", default=1000, min=2, max=1_000_000,
                             tooltip="Optimizer steps in all (a resumed run continues up to this). At least 2: "
                                     "Plot Loss Graph needs two losses."),
                io.Int.Input("batch_size", default=4, min=1, max=256, tooltip="Pairs per step."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate (no weight decay)."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=64,
                             tooltip="Pairs are resized and centre-cropped to this square (the model's "
                                     "size: 1024 for SDXL, 512 for SD1.x, 768 for SD2.x 768-v, 128 for the demo model)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds the heads' init, the data order, the noise and the noise levels."),
                io.Combo.Input("mode", options=list(GATE_MODES), default="hard",
                               tooltip="hard: binary gates with a straight-through estimator (the paper); "
                                       "soft: log-probability bias."),
                io.Combo.Input("sites", options=["mid-resolution", "all"], default="mid-resolution",
                               tooltip="Where heads gate: the mid-resolution sites (the latent/2 level: "
                                       "SDXL's 64x64 at 1024 px, the paper's; SD1.x's 32x32 at 512 px) or "
                                       "every cross-attention site."),
                io.Float.Input("mask_weight", default=0.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the mask supervision term for pairs with masks "
                                       "(0: the paper's diffusion loss alone)."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute the frozen model's activations in the backward: much "
                                         "less memory for about one more forward per step."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from <heads_name>.safetensors.resume.pt when there is one "
                                         "(left by a cancelled or finished run with the same settings)."),
            ],
            outputs=[
                Heads.Output(display_name="HEADS", tooltip="The trained heads, as Load MaskAttn Heads gives them."),
                LossMap.Output(display_name="LOSS", tooltip="Loss per step, for Plot Loss Graph."),
                io.Int.Output(display_name="steps", tooltip="Steps the heads were trained for."),
            ],
            **newer_schema_fields(search_aliases=["train maskattn", "train gate heads", "maskattn training"]),
        )

    @classmethod
    def validate_inputs(cls, heads_name: str) -> bool | str:
        if not HEADS_NAME.fullmatch(heads_name.removesuffix(".safetensors")):
            return (f"Train MaskAttn Heads (heads_name): {heads_name!r} is not a plain file name "
                    "(letters, digits, space, '.', '-', '_'; no folders)")
        return True

    @classmethod
    def execute(cls, model, clip, vae, training_set: TrainingSet, heads_name: str, steps: int, batch_size: int,
                learning_rate: float, resolution: int, seed: int, mode: str, sites: str, mask_weight: float,
                gradient_checkpointing: bool, resume: bool) -> io.NodeOutput:
        node = "Train MaskAttn Heads"
        if mask_weight > 0 and not training_set.has_masks:
            log.warning("%s: mask_weight %s, but %s has no masks: training with the diffusion loss alone",
                        node, mask_weight, training_set.name)
        settings = TrainingSettings(steps=steps, batch_size=batch_size, lr=learning_rate, resolution=resolution,
                                    seed=seed, mode=mode, sites=sites, mask_weight=mask_weight,
                                    recompute=gradient_checkpointing, cache_latents=True)
        folder = Path(folder_paths.get_folder_paths(HEADS_FOLDER)[0])
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{heads_name.removesuffix('.safetensors')}.safetensors"
        resume_path = Path(f"{out}.resume.pt")
        # loader nodes run under inference mode; training records autograd
        with torch.inference_mode(False):
            try:
                trainer = HeadTrainer(model, clip, vae, training_set.samples, settings)
                if resume and trainer.resume_from(resume_path):
                    log.info("%s: resumed from %s at step %d", node, resume_path, trainer.step)
            except ValueError as e:          # too few pairs for a batch; ResumeError: another run's file
                raise ValueError(f"{node}: {e}") from None
            progress = comfy.utils.ProgressBar(steps)
            progress.update_absolute(trainer.step, steps)

            def after_step(t: HeadTrainer) -> None:
                progress.update_absolute(t.step, steps)
                if t.step % CHECKPOINT_EVERY == 0:
                    t.save_resume(resume_path)
                if comfy.model_management.processing_interrupted():
                    t.save_resume(resume_path)
                    log.info("%s: cancelled at step %d; resume file %s", node, t.step, resume_path)
                    comfy.model_management.throw_exception_if_processing_interrupted()

            first_step = trainer.step
            try:
                trainer.run(after_step)
            except DataError as e:
                raise ValueError(f"{node} (training_set): {e}") from None
            trainer.save_resume(resume_path)
            heads = trainer.finished_heads(f"ComfyUI MODEL {type(model.model).__name__}")
            save_heads(heads, out)
        log.info("%s: %d steps, %.2f s/step, final loss %.5f; wrote %s", node, trainer.step,
                 trainer.seconds / max(1, trainer.step - first_step), trainer.losses[-1] if trainer.losses else float("nan"), out)
        return io.NodeOutput(load_heads(out), {"loss": list(trainer.losses)}, trainer.step)
