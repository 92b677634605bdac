"""What a compression method gets (`CompressContext`) and gives back (`Compressed`).

A method is a plain function `method(ctx, **params) -> Compressed`, chosen and parametrised by
`conf/compress/<method>.yaml` (`apply: {_target_: ..., _partial_: true, ...}`). It never touches
MLflow or the metrics files: the driver (compress.py) measures and records whatever comes back.

Fine-tuning goes through the family's own LightningModule (the parent's, network and optimiser swapped) and a
Lightning Trainer built from `cfg.trainer`, so any family whose module keeps its network in `.net`
(every dlzoo.models.base.FamilyModule does) can be pruned or quantisation-aware trained the same way.

A family without data (an RL agent: no `data.module`, and its checkpoint loads a plain network) gets
`datamodule=None`, the network as its own module, and example inputs from the recipe's
`compression.examples` hook; a method that needs training batches is refused in one line naming it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dlzoo.config import build
from dlzoo.errors import ConfigError
from dlzoo.training.trainer import build_trainer


def first_input(batch) -> tuple:
    """Default batch -> model inputs: (x, y) batches feed x (classification, forecasting)."""
    return (batch[0],)


@dataclass
class Compressed:
    """A method's result. `nets` holds one network per seed (one for all but distillation), each taking
    the parent's inputs; `float_reference` is a float twin for MACs when the net's ops (int8 kernels)
    are invisible to the FLOP counter; `info` adds method-specific numbers (e.g. reached sparsity)."""

    nets: list[nn.Module]
    info: dict[str, float] = field(default_factory=dict)
    float_reference: nn.Module | None = None
    seeds: list[int] | None = None


@dataclass
class CompressContext:
    cfg: DictConfig                 # the composed config: parent recipe (model, data, trainer) + compress
    net: nn.Module                  # a private copy of the parent's trained network, float32, eval mode
    datamodule: object              # the parent's LightningDataModule (setup done); None for a family without data
    inputs: Callable = first_input  # batch -> tuple of model inputs
    module: object = None           # the parent's LightningModule (trained weights; vocabularies etc. for some families)
    examples: Callable | None = None  # batch size -> tuple of model inputs, for a family without data (compression.examples)

    def parent(self) -> nn.Module:
        """A fresh copy of the trained parent network (methods change their copy in place)."""
        return copy.deepcopy(self.net)

    def data(self):
        """The parent's DataModule, or a one-line refusal for a family without one (an agent: dynamic-int8 and
        policy-distill need no data)."""
        if self.datamodule is None:
            raise ConfigError(f"compress={self.cfg.compress.method} needs the family's data (data.module), and "
                              f"{self.cfg.experiment_name} has none: pick a method that works without data")
        return self.datamodule

    def example(self, batch_size: int | None = None) -> tuple:
        """Model inputs of one training batch (for tracing and torch-pruning's dependency graph), or of
        `batch_size` (default 1) examples from the family's `compression.examples` hook when it has no data."""
        if self.datamodule is None and self.examples is not None:
            return self.examples(batch_size or 1)
        inputs = self.inputs(next(iter(self.data().train_dataloader())))
        return tuple(x[:batch_size] for x in inputs) if batch_size else inputs

    def test_inputs(self):
        """Model inputs to check an exported model on: the test split, or one batch of examples without data."""
        if self.datamodule is None and self.examples is not None:
            return iter([self.examples(256)])
        return (self.inputs(b) for b in self.data().test_dataloader())

    def calibration_batches(self, n: int):
        """Up to `n` training batches, un-augmented, as model inputs (static-quantisation calibration)."""
        for i, batch in enumerate(self.data().train_dataloader()):
            if i >= n:
                return
            yield self.inputs(batch)

    def with_net(self, net: nn.Module):
        """The parent's LightningModule with `net` in place of its network: what the family's evaluator and
        training steps expect (a family module may carry more than the network, e.g. vocabularies). A family
        whose checkpoint loads a plain network (an agent) is evaluated on the network itself."""
        if not hasattr(self.module, "net"):
            if not isinstance(net, type(self.net)):  # e.g. fp16's Cast wrapper: the evaluator calls the class's own methods
                raise ConfigError(f"compress={self.cfg.compress.method} turns the {type(self.net).__name__} into a "
                                  f"{type(net).__name__}, which {self.cfg.experiment_name}'s evaluator cannot use: pick a "
                                  f"method that keeps the network's class (e.g. dynamic-int8)")
            return net.eval()
        holder = copy.deepcopy(self.module)
        holder.net = net
        return holder.eval()

    def net_kwargs(self) -> dict:
        """Constructor arguments a new network of this family needs from the data (e.g. vocabulary sizes):
        the family's LightningModule may provide them as `net_kwargs()`; none by default."""
        return dict(self.module.net_kwargs()) if hasattr(self.module, "net_kwargs") else {}

    def family_module(self, net: nn.Module, epochs: int, lr: float | None = None):
        """The family's LightningModule around `net`, its LR schedule spanning `epochs` (optionally a new LR)."""
        holder = self.with_net(net)
        holder.optimizer_factory, holder.scheduler_factory = self.optimizer_factories(epochs, lr)
        return holder

    def optimizer_factories(self, epochs: int, lr: float | None = None):
        """The family's (optimizer, scheduler) `_partial_` factories, schedule spanning `epochs`."""
        self.data()  # only fine-tuning on the family's data uses them: a family without data is refused here
        cfg = self._with_epochs(epochs)
        if lr is not None:
            cfg.model.optimizer.lr = lr
        scheduler = build(cfg.model.scheduler, "model.scheduler") if cfg.model.get("scheduler") else None
        return build(cfg.model.optimizer, "model.optimizer"), scheduler

    def fit(self, module, epochs: int) -> None:
        """Train `module` for `epochs` on the training split with the parent's trainer settings (the
        profile's batch limits included), without validation, checkpoints or a logger: the final weights count."""
        if epochs <= 0:
            return
        datamodule = self.data()
        trainer_cfg = copy.deepcopy(self.cfg.trainer)
        with open_dict(trainer_cfg):
            trainer_cfg.max_epochs = epochs
            trainer_cfg.limit_val_batches = 0
            trainer_cfg.pop("default_root_dir", None)
        module.train()  # Lightning leaves modules in the mode it finds them: BN and dropout must train
        with tempfile.TemporaryDirectory(prefix="dlzoo-finetune-") as root:
            trainer = build_trainer(trainer_cfg, logger=False, enable_checkpointing=False, default_root_dir=root)
            trainer.fit(module, datamodule=datamodule)
        module.eval()

    def _with_epochs(self, epochs: int) -> DictConfig:
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.trainer.max_epochs = max(int(epochs), 1)  # the cosine schedule's T_max follows it
        OmegaConf.resolve(cfg)
        return cfg

