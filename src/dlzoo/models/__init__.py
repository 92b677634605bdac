"""Model families: one module per family, the nn.Module and its LightningModule side by side."""


def count_parameters(model) -> int:
    """Trainable and frozen parameters, tied weights once (`parameters()` yields a shared tensor once)."""
    return sum(p.numel() for p in model.parameters())
