"""Binary addition metrics: exact-sum accuracy on held-out (a, b) pairs, plus per-bit accuracy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from dlzoo.data.binary_addition import from_bits
from dlzoo.evaluation.plots import plot_bar


@torch.no_grad()
def evaluate(module, datamodule, out_dir: str | Path) -> tuple[dict, list[Path]]:
    """Return metrics and artifact files for the test split (pairs never seen in training)."""
    datamodule.setup("test")
    module.eval()
    preds, targets, inputs = [], [], []
    for x, y in datamodule.test_dataloader():
        preds.append((module(x) > 0).long())
        targets.append(y.long())
        inputs.append(x.long())
    pred, target, x = torch.cat(preds).numpy(), torch.cat(targets).numpy(), torch.cat(inputs).numpy()
    exact = (pred == target).all(axis=1)
    per_bit = (pred == target).mean(axis=0)
    metrics = {
        "test/accuracy": float(exact.mean()),
        "test/bit_accuracy": float((pred == target).mean()),
        "test/num_examples": int(len(exact)),
    }
    out_dir = Path(out_dir)
    files = [
        plot_bar(range(len(per_bit)), per_bit, out_dir / "per_bit_accuracy.png",
                 title="accuracy per output bit (0 = least significant)", ylabel="accuracy", ylim=(min(0.9, per_bit.min()), 1.0))
    ]
    a, b = from_bits(x[:, :, 0]), from_bits(x[:, :, 1])
    examples = pd.DataFrame({"a": a, "b": b, "a+b": a + b, "predicted": from_bits(pred), "correct": exact})
    # A table of predictions vs truth: the first errors (if any) and then correct examples.
    table = pd.concat([examples[~examples.correct].head(20), examples[examples.correct].head(20)])
    table_path = out_dir / "predictions.csv"
    table.to_csv(table_path, index=False)
    files.append(table_path)
    return metrics, files
