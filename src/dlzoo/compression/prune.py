"""Pruning: global unstructured magnitude pruning (zeros in place, same shapes) and structured channel
pruning (whole channels removed, so the network really gets smaller and cheaper).

Both prune in rounds with a few epochs of Lightning fine-tuning (the family's own recipe, lower LR) in
between, which is what keeps the accuracy at high sparsity.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from dlzoo.compression.context import CompressContext, Compressed
from dlzoo.compression.measure import prunable, weight_sparsity
from dlzoo.errors import ConfigError


def check_fraction(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"compress.apply.{name} must be in [0, 1), got {value}")
    return value


def _schedule(target: float, rounds: int) -> list[float]:
    """Sparsity after each round, cubic ramp (Zhu & Gupta 2017): big steps first, small steps near the target."""
    if rounds < 1:
        raise ConfigError(f"compress.apply.rounds must be >= 1, got {rounds}")
    return [target * (1 - (1 - (r + 1) / rounds) ** 3) for r in range(rounds)]


def unstructured(ctx: CompressContext, sparsity: float = 0.9, rounds: int = 4, epochs_per_round: int = 3, lr: float = 1e-3,
                 skip_depthwise: bool = True) -> Compressed:
    """Global magnitude pruning of the conv/linear weights to `sparsity`, in `rounds` with fine-tuning
    after each; the masks are then folded into the weights (`prune.remove`), leaving plain zeros.

    Depthwise filters (9 weights per channel, a few % of a MobileNet) are skipped by default: a global
    threshold would delete whole channels there. `sparsity` is reached over the pruned weights;
    `sparsity_all` reports it over every conv/linear weight."""
    sparsity = check_fraction(sparsity, "sparsity")
    schedule = _schedule(sparsity, rounds)
    net = ctx.parent()
    params = [(m, n) for m, n in prunable(net) if not (skip_depthwise and _depthwise(m))]
    total = sum(getattr(m, name).numel() for m, name in params)
    for target in schedule:
        already = sum(int((getattr(m, name) == 0).sum()) for m, name in params)
        # On an already-pruned tensor, prune's `amount` (an int) counts among the still-unpruned weights.
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=max(round(target * total) - already, 0))
        ctx.fit(ctx.family_module(net, epochs_per_round, lr), epochs_per_round)
    for module, name in params:
        prune.remove(module, name)  # permanent: weight = weight_orig * mask, no hooks left
    reached = sum(int((getattr(m, name) == 0).sum()) for m, name in params) / total
    return Compressed([net.eval()], {"sparsity": reached, "sparsity_target": sparsity, "sparsity_all": weight_sparsity(net)})


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def structured(ctx: CompressContext, channel_ratio: float = 0.33, rounds: int = 2, epochs_per_round: int = 10, lr: float = 3e-3,
               protect_output: bool = True) -> Compressed:
    """Remove `channel_ratio` of the channels of every prunable layer (L2 magnitude of each coupled group,
    torch-pruning's dependency graph keeps BN, depthwise convs, concatenations and the classifier consistent),
    in `rounds` with fine-tuning after each. The output layer keeps its width (it is the number of classes)."""
    import torch_pruning as tp

    channel_ratio = check_fraction(channel_ratio, "channel_ratio")
    net = ctx.parent().eval()
    example = ctx.example(1)
    ignored = [_output_layer(net)] if protect_output else []
    pruner = tp.pruner.BasePruner(
        net, example if len(example) > 1 else example[0], importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=channel_ratio, iterative_steps=max(int(rounds), 1), ignored_layers=[m for m in ignored if m is not None],
    )
    for _ in range(max(int(rounds), 1)):
        pruner.step()
        ctx.fit(ctx.family_module(net, epochs_per_round, lr), epochs_per_round)
    for p in net.parameters():  # torch-pruning swaps in new Parameters; make sure none is left frozen
        p.requires_grad_(True)
    return Compressed([net.eval()], {"channel_ratio": channel_ratio})


def _output_layer(net: nn.Module) -> nn.Module | None:
    """The last Linear/Conv in definition order: the layer whose width is the output size."""
    last = None
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            last = module
    return last

