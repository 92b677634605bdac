"""Model families: one module per family, the nn.Module and its LightningModule side by side."""
