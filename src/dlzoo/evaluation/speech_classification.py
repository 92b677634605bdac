"""Spoken-digit classification on held-out recordings, with the protocol a small dataset needs.

- The family's model (the train stage's `best.ckpt`) on the official test split: accuracy, per-digit
  recall, confusion matrix, parameters, MACs and CPU latency.
- The further fits of the train stage's protocol (dlzoo.training.protocol), each on its own held-out split:
  the seeds on the official test split (mean and spread over every seed, the family's model included) and
  the leave-one-speaker-out folds on their speaker (a per-speaker table and the mean over folds).
- The MFCC + SVM baseline (librosa features with per-speaker CMVN, scikit-learn SVM with C and gamma chosen by
  cross-validation on the training recordings, folds shaped like the split's test) fitted on exactly the same training recordings
  of each split and scored on the same test recordings.
- The cross-check: the WaveNet generator (the generation family's checkpoint) speaks `per_digit` clips of
  each digit, and the classifier labels them; the share recognised as the conditioning digit, with a 95%
  Wilson interval, beside chance (1 in 10).

A compress stage scores one network (its `compress_method` is set): only the first part runs there.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dlzoo.checkpoints import load_checkpoint
from dlzoo.config import build
from dlzoo.data.fsdd import SAMPLE_RATE, SILENCE, mu_law_decode
from dlzoo.errors import CheckpointError, ConfigError
from dlzoo.evaluation.plots import plot_bar, plot_confusion_matrix
from dlzoo.evaluation.profiling import profile_classifier
from dlzoo.io import read_json
from dlzoo.models.wavenet import WaveNetModule

N_DIGITS = 10
HOLDOUT_KEY = "data.module.holdout_speaker"


@torch.no_grad()
def predict(net, waves: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    net.eval()
    return torch.cat([net(waves[i : i + batch_size]).argmax(dim=1) for i in range(0, len(waves), batch_size)])


def accuracy_of(net, datamodule) -> tuple[float, torch.Tensor, torch.Tensor]:
    test = datamodule.datasets["test"]
    pred = predict(net, test.waves)
    return int((pred == test.digits).sum()) / len(pred), test.digits, pred


# ----------------------------------------------------------------------------- MFCC + SVM baseline
def mfcc_features(waves: torch.Tensor, speakers: np.ndarray, n_mfcc: int, n_fft: int, hop: int, n_mels: int,
                  cmvn: bool = True) -> np.ndarray:
    """Per clip: the mean and standard deviation over time of each MFCC (a fixed-length vector), after cepstral
    mean and variance normalisation over each speaker's frames (the speech baseline's standard speaker
    normalisation: it needs no labels, so a held-out speaker's own clips normalise that speaker)."""
    import librosa

    m = librosa.feature.mfcc(y=waves[:, 0].numpy(), sr=SAMPLE_RATE, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    if cmvn:
        for speaker in np.unique(speakers):
            frames = m[speakers == speaker]                       # (clips, n_mfcc, T) of one speaker
            mean = frames.mean(axis=(0, 2), keepdims=True)
            std = frames.std(axis=(0, 2), keepdims=True) + 1e-8
            m[speakers == speaker] = (frames - mean) / std
    return np.concatenate([m.mean(axis=-1), m.std(axis=-1)], axis=1)


def svm_accuracy(datamodule, svm: dict) -> tuple[float, dict]:
    """Fitted on the split's training recordings (the network's validation recordings stay unused, as the
    network only picks its checkpoint with them), C and gamma chosen by cross-validation on those recordings
    alone, with folds shaped like the split's own test: other takes of the same speakers on the official split,
    other (training) speakers on a leave-one-speaker-out fold, whose test speaker no fold sees. Scored on the
    split's test recordings; returns the accuracy and the chosen hyper-parameters."""
    from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    feats = svm["features"]
    train, test = datamodule.datasets["train"], datamodule.datasets["test"]
    train_speakers, test_speakers = datamodule.arrays["train"]["speakers"], datamodule.arrays["test"]["speakers"]
    x = mfcc_features(train.waves, train_speakers, **feats)
    grid = {"svc__C": list(svm["C"]), "svc__gamma": list(svm["gamma"])}
    n_folds = int(svm.get("cv_folds", 5))
    if datamodule.holdout_speaker is None:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=0)
    else:
        folds = GroupKFold(n_splits=min(n_folds, len(np.unique(train_speakers))))
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC()), grid, cv=folds, n_jobs=1)
    search.fit(x, train.digits.numpy(), groups=train_speakers)
    pred = search.predict(mfcc_features(test.waves, test_speakers, **feats))
    chosen = {"C": float(search.best_params_["svc__C"]), "gamma": search.best_params_["svc__gamma"]}
    return float((pred == test.digits.numpy()).mean()), chosen


# ----------------------------------------------------------------------------- the generator cross-check
def load_generator(model_dir: str | Path):
    """The generation family's trained WaveNet, built from the config its train stage saved."""
    model_dir = Path(model_dir)
    config = model_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"no generator at {model_dir}: run the WaveNet stages first (`dvc repro train_speech-fsdd-generation-wavenet`)")
    gen_cfg = OmegaConf.load(config)
    checkpoint = load_checkpoint(model_dir / "best.ckpt", gen_cfg.task, gen_cfg.family)
    module = build(gen_cfg.model, "generator model")
    if not isinstance(module, WaveNetModule):
        raise CheckpointError(f"{model_dir} holds a {type(module).__name__}, not a WaveNet generator")
    module.load_state_dict(checkpoint["state_dict"])
    return module.net.eval()


@torch.no_grad()
def cross_check(net, datamodule, generator_dir: str, per_digit: int, samples: int, temperature: float, seed: int,
                out_dir: Path) -> tuple[dict, list[Path]]:
    generator = load_generator(generator_dir)
    n_speakers = len(datamodule.speakers)
    digits = torch.arange(N_DIGITS).repeat_interleave(per_digit)
    speakers = torch.arange(len(digits)) % n_speakers  # every speaker voices every digit in turn
    uniforms = torch.rand(len(digits), samples, generator=torch.Generator().manual_seed(seed))
    codes, _ = generator.generate(digits, speakers, uniforms, SILENCE, temperature=temperature)
    waves = mu_law_decode(codes.double()).float()[:, None, :]
    if waves.shape[-1] < datamodule.datasets["test"].waves.shape[-1]:  # padded with silence like a short recording
        waves = torch.nn.functional.pad(waves, (0, datamodule.datasets["test"].waves.shape[-1] - waves.shape[-1]))
    pred = predict(net, waves)
    hits = int((pred == digits).sum())
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(hits, len(digits), alpha=0.05, method="wilson")
    confusion = np.zeros((N_DIGITS, N_DIGITS), dtype=int)
    np.add.at(confusion, (digits.numpy(), pred.numpy()), 1)
    metrics = {"crosscheck/recognised": hits / len(digits), "crosscheck/recognised_ci_low": low,
               "crosscheck/recognised_ci_high": high, "crosscheck/chance": 1 / N_DIGITS,
               "crosscheck/num_generated": len(digits), "crosscheck/above_chance": float(low > 1 / N_DIGITS)}
    path = plot_confusion_matrix(confusion, out_dir / "generated_confusion_matrix.png",
                                 title=f"generated clips: {hits}/{len(digits)} recognised (chance 10%)")
    return metrics, [path]


# ----------------------------------------------------------------------------- the evaluator
def evaluate(module, datamodule, out_dir: str | Path, task: str, family: str, runs_dir: str | None = None,
             svm: dict | None = None, crosscheck: dict | None = None, compress_method: str | None = None,
             min_mean_accuracy: float = 0.97, latency_threads: int = 1) -> tuple[dict, list[Path]]:
    out_dir = Path(out_dir)
    datamodule.setup("test")
    net = module.net if hasattr(module, "net") else module
    acc, y, pred = accuracy_of(net, datamodule)
    confusion = np.zeros((N_DIGITS, N_DIGITS), dtype=int)
    np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    metrics = {"test/accuracy": acc, "test/error_count": int((pred != y).sum()), "test/min_class_recall": float(recall.min()),
               "test/num_examples": int(len(y))}
    metrics.update(profile_classifier(net, tuple(datamodule.datasets["test"].waves.shape[1:]), threads=latency_threads))
    files = [plot_confusion_matrix(confusion, out_dir / "confusion_matrix.png", title=f"official test split: accuracy {acc:.4f}")]
    if compress_method is not None:
        return metrics, files

    # The protocol's further fits, each on its own held-out split.
    protocol = read_json(Path(runs_dir) / "protocol.json") if runs_dir and (Path(runs_dir) / "protocol.json").is_file() else {}
    seed_acc, folds = [acc], {}
    for name, run in protocol.items():
        checkpoint = load_checkpoint(Path(runs_dir) / name / "best.ckpt", task, family)
        fitted = copy.deepcopy(module)
        fitted.load_state_dict(checkpoint["state_dict"])
        overrides = run["overrides"]
        if set(overrides) == {"seed"}:
            seed_acc.append(accuracy_of(fitted.net, datamodule)[0])
        elif set(overrides) == {HOLDOUT_KEY}:
            speaker = overrides[HOLDOUT_KEY]
            fold = datamodule.with_holdout(speaker)
            fold.setup("test")
            folds[speaker] = {"accuracy": accuracy_of(fitted.net, fold)[0], "module": fold}
        else:
            raise ConfigError(f"{runs_dir}/protocol.json: run {name} overrides {sorted(overrides)}; this evaluator "
                              f"scores seeds and {HOLDOUT_KEY} folds only")
    metrics["test/accuracy_mean"] = statistics.fmean(seed_acc)
    metrics["test/accuracy_std"] = statistics.stdev(seed_acc) if len(seed_acc) > 1 else 0.0
    metrics["test/num_seeds"] = len(seed_acc)
    metrics.update({f"test/accuracy_seed{k}": a for k, a in enumerate(seed_acc)})
    metrics["acceptance/min_mean_accuracy"] = min_mean_accuracy
    metrics["acceptance/accuracy_passed"] = float(metrics["test/accuracy_mean"] >= min_mean_accuracy)

    rows = []
    if svm:
        metrics["baseline/svm_accuracy"], chosen = svm_accuracy(datamodule, svm)
        metrics["baseline/svm_C"] = chosen["C"]
        metrics["baseline/svm_gamma"] = float(chosen["gamma"]) if chosen["gamma"] != "scale" else -1.0  # -1: "scale"
    for speaker, fold in folds.items():
        metrics[f"loso/accuracy_{speaker}"] = fold["accuracy"]
        row = {"speaker": speaker, "test_recordings": len(fold["module"].datasets["test"]), "network": fold["accuracy"]}
        if svm:
            row["mfcc_svm"], chosen = svm_accuracy(fold["module"], svm)
            metrics[f"baseline/svm_loso_accuracy_{speaker}"] = row["mfcc_svm"]
            row["svm_C"], row["svm_gamma"] = chosen["C"], chosen["gamma"]
        rows.append(row)
    if folds:
        metrics["loso/accuracy_mean"] = statistics.fmean(r["network"] for r in rows)
        metrics["loso/num_folds"] = len(rows)
        if svm:
            metrics["baseline/svm_loso_accuracy_mean"] = statistics.fmean(r["mfcc_svm"] for r in rows)
        import pandas as pd

        table = pd.DataFrame(rows)
        out_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_dir / "loso_per_speaker.csv", index=False)
        (out_dir / "loso_per_speaker.md").write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
        files += [out_dir / "loso_per_speaker.csv", out_dir / "loso_per_speaker.md",
                  plot_bar([r["speaker"] for r in rows], [r["network"] for r in rows], out_dir / "loso_accuracy.png",
                           title="leave-one-speaker-out: accuracy on the held-out speaker", ylabel="accuracy", ylim=(0, 1))]
    if crosscheck:
        extra, extra_files = cross_check(net, datamodule, out_dir=out_dir, **crosscheck)
        metrics.update(extra)
        files += extra_files
    return metrics, files
