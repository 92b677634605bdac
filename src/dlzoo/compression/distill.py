"""Knowledge distillation (Hinton et al. 2015): a small student learns from the trained parent (the
teacher) through its temperature-softened outputs, mixed with the ordinary hard-label loss:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The loss works on logits of shape (..., classes) with targets (...): one prediction per image for a
classifier, one per target token for a sequence model (word-level KD, Kim & Rush 2016), positions whose
target is `ignore_index` (padding) left out. `alpha = 0` is the control: the same student, data, seeds,
optimiser and epochs, hard labels only (conf/compress/distill-control.yaml).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.compression.context import CompressContext, Compressed
from dlzoo.errors import ConfigError
from dlzoo.models import count_parameters


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                     temperature: float, alpha: float, ignore_index: int = -100) -> torch.Tensor:
    classes = student_logits.size(-1)
    student, targets = student_logits.reshape(-1, classes), targets.reshape(-1)
    keep = targets != ignore_index
    hard = F.cross_entropy(student[keep], targets[keep])
    if alpha == 0 or teacher_logits is None:
        return hard
    teacher = teacher_logits.reshape(-1, classes)[keep]
    soft = F.kl_div(F.log_softmax(student[keep] / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2
    return alpha * soft + (1 - alpha) * hard


def xy_batch(batch) -> tuple[tuple, torch.Tensor]:
    """Default batch layout (inputs, target): an (x, y) classification batch."""
    return (batch[0],), batch[1]


def teacher_forcing_batch(batch) -> tuple[tuple, torch.Tensor]:
    """A translation batch (src, tgt_in, tgt_out): inputs (src, tgt_in), one target token per position."""
    src, tgt_in, tgt_out = batch
    return (src, tgt_in), tgt_out


class DistillModule(L.LightningModule):
    """Trains `student` against `teacher` (frozen, eval mode) for a fixed budget; the last weights count."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, temperature: float, alpha: float,
                 optimizer, scheduler=None, batch=xy_batch, ignore_index: int = -100, call: str = "forward",
                 scheduler_interval: str = "epoch"):
        super().__init__()
        self.student, self.temperature, self.alpha, self.call = student, temperature, alpha, call
        self.scheduler_interval = scheduler_interval  # the family's: per epoch (cosine) or per step (warmup)
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None and alpha > 0 else []  # not a submodule: never trained or saved
        self.optimizer_factory, self.scheduler_factory, self.batch, self.ignore_index = optimizer, scheduler, batch, ignore_index

    def training_step(self, batch, batch_idx):
        inputs, targets = self.batch(batch)
        teacher_logits = None
        if self._teacher:
            with torch.no_grad():
                teacher_logits = getattr(self._teacher[0], self.call)(*inputs)
        student_logits = getattr(self.student, self.call)(*inputs)
        loss = soft_target_loss(student_logits, teacher_logits, targets, self.temperature, self.alpha, self.ignore_index)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.student.parameters())
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step":  # per-step schedules (warmup) need the run's length
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}


def distill(ctx: CompressContext, student: Callable[[], nn.Module], temperature: float = 4.0, alpha: float = 0.9, epochs: int = 40,
            seeds: tuple[int, ...] = (0, 1, 2), lr: float | None = None, max_student_fraction: float = 0.2,
            batch=xy_batch, ignore_index: int = -100, call: str = "forward") -> Compressed:
    """Train a fresh student (`student()`: a `_partial_` network config, built after seeding so each seed
    starts from its own initialisation) once per seed, with the parent as teacher. `call` names the method
    that gives logits for the batch's inputs (`logits` for translators, whose forward is greedy search)."""
    if temperature <= 0:
        raise ConfigError(f"compress.apply.temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"compress.apply.alpha must be in [0, 1], got {alpha}")
    if not seeds:
        raise ConfigError("compress.apply.seeds is empty: give at least one seed")
    teacher = ctx.parent().eval()
    teacher_params = count_parameters(teacher)
    nets = []
    for seed in seeds:
        L.seed_everything(int(seed), workers=True)
        net = student(**ctx.net_kwargs())  # e.g. vocabulary sizes for a sequence model
        if count_parameters(net) > max_student_fraction * teacher_params:
            raise ConfigError(
                f"the student has {count_parameters(net)} parameters, more than {max_student_fraction:g} of the "
                f"teacher's {teacher_params}: shrink compress.apply.student"
            )
        optimizer, scheduler = ctx.optimizer_factories(epochs, lr)
        module = DistillModule(net, teacher, temperature, alpha, optimizer, scheduler, batch, ignore_index, call,
                               scheduler_interval=getattr(ctx.module, "scheduler_interval", "epoch"))
        ctx.fit(module, epochs)
        nets.append(net.eval())
    info = {"teacher_params": float(teacher_params), "student_fraction": count_parameters(nets[0]) / teacher_params,
            "temperature": float(temperature), "alpha": float(alpha)}
    return Compressed(nets, info, seeds=[int(s) for s in seeds])
