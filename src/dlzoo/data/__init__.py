"""Datasets: one module per dataset, holding its `prepare` step (a DVC stage) and its LightningDataModule."""
