"""The translator as an MLflow model that `mlflow models serve` can answer text with.

The evaluate stage's deployable translator is one TorchScript file (`translator.pt`: network, greedy search,
vocabularies, direction). Raw text still needs the project's tokenisers (Moses for English, janome for
Japanese), so this wraps both in an `mlflow.pyfunc` model: the file as an artifact, the `dlzoo` package as
`code_paths`, and pinned requirements. It answers `{"inputs": ["I can't swim at all."]}` with a list of
translations, one per input string (an empty, over-long or undecodable line gives "", as `dlzoo.translate`);
`"params": {"beam": 5}` decodes with a beam. The champions stage packages the champion this way
(`models:/translation-en-ja@champion`); the command below packages any exported file by hand.

    python -m dlzoo.serving --model artifacts/reports/translation-en-ja-transformer/translator.pt \\
        --register translation-en-ja-transformer-text [--beam 5]
    MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/translation-en-ja-transformer-text/1 \\
        --env-manager local -h 127.0.0.1 -p 5001
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow

from dlzoo.tracking.requirements import PACKAGE_DIR  # src/dlzoo, shipped as code_paths

# What the wrapped code imports (dlzoo.translate: torch, the tokenisers; dlzoo.data.enja: Lightning's DataModule)
REQUIREMENTS = ("torch", "lightning", "numpy", "sacremoses", "janome", "matplotlib", "omegaconf")


class TranslatorModel(mlflow.pyfunc.PythonModel):
    """Text in, text out: `translate_lines` of dlzoo.translate on the exported TorchScript translator."""

    def load_context(self, context) -> None:
        from dlzoo.evaluation.translation import load_translator

        self.module, self.src_vocab, self.tgt_vocab, self.meta = load_translator(context.artifacts["translator"])
        self.beam = int((context.model_config or {}).get("beam", 1))

    def predict(self, context, model_input, params=None) -> list[str]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from dlzoo.translate import translate_lines

        beam = int((params or {}).get("beam", self.beam))
        if not 1 <= beam <= 16:
            raise MlflowException(f"beam must be between 1 and 16, got {beam}", error_code=INVALID_PARAMETER_VALUE)
        if hasattr(model_input, "columns"):  # a DataFrame: its first column holds the sentences
            model_input = model_input[model_input.columns[0]]
        lines = [str(text).encode("utf-8") for text in list(model_input)]
        outputs, _ = translate_lines(lines, self.module, self.src_vocab, self.tgt_vocab, self.meta, beam=beam)
        return outputs


def text_signature(beam: int = 1):
    """Sentences in, translations out; `params: {"beam": k}` picks the search per request."""
    from mlflow.models import infer_signature

    return infer_signature(["I can't swim at all."], ["全然泳げない。"], params={"beam": beam})


def log_translator(path: str | Path, registered_model_name: str | None = None, beam: int = 1):
    """Log (and optionally register) the translator file as a pyfunc model in the active run; its ModelInfo.
    `path` is a file `load_translator` accepts (`main` checks it before it opens the run)."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=TranslatorModel(), artifacts={"translator": str(path)},
        code_paths=[str(PACKAGE_DIR)], model_config={"beam": beam},
        pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
        signature=text_signature(beam), registered_model_name=registered_model_name)


def main(argv: list[str] | None = None) -> int:
    from dlzoo.errors import CheckpointError

    parser = argparse.ArgumentParser(prog="python -m dlzoo.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="translator.pt written by a translation evaluate stage")
    parser.add_argument("--register", default=None, help="registered model name, e.g. translation-en-ja-transformer-text")
    parser.add_argument("--beam", type=int, default=1, help="beam size the served model decodes with (1 = greedy)")
    parser.add_argument("--experiment", default="translation-en-ja", help="MLflow experiment of the packaging run")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="the store (default: MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    args = parser.parse_args(argv)
    if args.beam < 1:
        parser.error("--beam must be >= 1")
    from dlzoo.evaluation.translation import load_translator

    try:
        meta = load_translator(args.model)[3]  # before any run is opened: a bad file leaves the store as it was
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dlzoo.tracking import ensure_experiment
    from dlzoo.tracking.mlflow_tracking import git_commit

    # the tags pipeline runs carry where this run knows them (the experiment is the task; the export records its
    # network class, not the recipe's family name, so that goes under its own key)
    tags = {"stage": "package", "source": str(args.model), "task": args.experiment, "git_commit": git_commit(),
            "dvc_stage": os.environ.get("DVC_STAGE", "serving (outside dvc)"), "network": str(meta.get("family", ""))}
    # not mlflow.set_experiment: it exports MLFLOW_EXPERIMENT_ID, which outlives this call in the caller's process
    mlflow.set_tracking_uri(args.tracking_uri)
    experiment_id = ensure_experiment(args.experiment, None, args.tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="translator-pyfunc",
                          tags=tags):
        info = log_translator(args.model, args.register, args.beam)
    print(f"logged {info.model_uri}" + (f" as {args.register}" if args.register else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
