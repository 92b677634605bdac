"""Champions that answer in the terms of their task: boxes, instance masks, a segmentation mask, a Go move, an
audio clip. Each is an `mlflow.pyfunc` model holding the trained version's network and the resolved config of its
train run, and it answers through the same functions the playground uses (dlzoo.demo: vision, go_play, audio),
so the page and `make serve` give the same answer. A request the model cannot take is an MLflow
INVALID_PARAMETER_VALUE error: HTTP 400 with one line.

    detections  {"inputs": [<N images, H x W x 3, 0-255>], "params": {"min_score": 0.3}}
                -> [{"boxes": [[x0, y0, x1, y1], ...], "labels": ["circle", ...], "scores": [0.98, ...]}, ...]
    instances   the same, plus "masks": [<COCO RLE {"size": [H, W], "counts": "..."}>, ...]
    masks       {"inputs": [<N images>]} -> [{"size": [H, W], "classes": {"circle": <RLE>, ...}}, ...]
    moves       {"inputs": ["C3 D3 pass", "(;SZ[5];B[cc];W[dc])", ""]} (a move list or SGF per position)
                -> [{"move": "B2", "player": "Black", "value": 0.12, "prior": 0.31}, ...]
    clips       {"inputs": [3, 7], "params": {"seed": 0, "seconds": 0.5}}
                -> [{"digit": 3, "sample_rate": 8000, "wav_base64": "UklGR..."}, ...]
"""

from __future__ import annotations

import base64

import mlflow
import numpy as np


def _refuse(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _rows(model_input) -> list:
    """The request's inputs as a list (a DataFrame's first column, a list, or an array's first axis)."""
    if hasattr(model_input, "columns"):
        return list(model_input[model_input.columns[0]])
    return list(model_input)


def _image(row, index: int) -> np.ndarray:
    """One input image as H x W x 3 uint8 (0-255), or a one-line refusal naming it."""
    image = np.asarray(row)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8 or max(image.shape[:2]) > 4096:
        raise _refuse(f"input {index}: expected an image of H x W x 3 values 0-255 (8 to 4096 pixels a side), "
                      f"got shape {list(image.shape)}")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 255:
        raise _refuse(f"input {index}: pixel values must lie in 0-255")
    return image.astype(np.uint8)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


class _TaskModel(mlflow.pyfunc.PythonModel):
    """The trained network and its train run's config (artifacts "network" and "config")."""

    def load_context(self, context) -> None:
        import mlflow.pytorch
        from omegaconf import OmegaConf

        self.net = mlflow.pytorch.load_model(context.artifacts["network"])
        self.cfg = OmegaConf.load(context.artifacts["config"])


def _min_score(params) -> float:
    value = float((params or {}).get("min_score", 0.3))
    if not 0.0 <= value <= 1.0:
        raise _refuse(f"min_score must lie in [0, 1], got {value}")
    return value


class Detections(_TaskModel):
    """Each image's boxes, class names and scores at or above `min_score`."""

    with_masks = False

    def predict(self, context, model_input, params=None):
        from dlzoo.demo.vision import detect, instances

        find = instances if self.with_masks else detect
        score = _min_score(params)
        answers = []
        for i, row in enumerate(_rows(model_input)):
            found = find(self.net, self.cfg, _image(row, i), min_score=score)
            answer = {"boxes": [d["box"] for d in found], "labels": [d["label"] for d in found],
                      "scores": [d["score"] for d in found]}
            if self.with_masks:
                answer["masks"] = [_rle(d["mask"]) for d in found]
            answers.append(answer)
        return answers


class Instances(Detections):
    """Detections with each instance's mask as COCO run-length encoding."""

    with_masks = True


class Masks(_TaskModel):
    """Each image's segmentation as one run-length-encoded mask per class present (background left out)."""

    def predict(self, context, model_input, params=None):
        from dlzoo.demo.vision import class_names, segment

        names = class_names(self.cfg)
        answers = []
        for i, row in enumerate(_rows(model_input)):
            classes = segment(self.net, self.cfg, _image(row, i))
            present = [int(c) for c in np.unique(classes) if c != 0]
            answers.append({"size": list(classes.shape),
                            "classes": {names[c] if c < len(names) else f"class {c}": _rle(classes == c)
                                        for c in present}})
        return answers


def _moves_of(text: str, n: int) -> list[str]:
    """A position as its moves: an SGF game record (its main line) or a list of points such as "C3 D3 pass"."""
    text = str(text).strip()
    if text.startswith("("):
        from sgfmill import sgf

        from dlzoo.demo.go_play import COLUMNS

        try:
            game = sgf.Sgf_game.from_string(text)
        except ValueError as exc:
            raise _refuse(f"not an SGF record: {str(exc).splitlines()[0]}") from None
        if game.get_size() != n:
            raise _refuse(f"the SGF record is a {game.get_size()}x{game.get_size()} game; this champion plays {n}x{n}")
        moves = []
        for node in game.get_main_sequence():
            colour, point = node.get_move()
            if colour is not None:
                moves.append("pass" if point is None else f"{COLUMNS[point[1]]}{point[0] + 1}")
        return moves
    return text.replace(",", " ").split()


class Moves(_TaskModel):
    """Zero's move (its own search, as the evaluate stage plays) in each position, with the network's value for
    the side to move and its prior on the chosen move."""

    def predict(self, context, model_input, params=None):
        from dlzoo.demo.go_play import COLOUR_NAMES, GoSession

        answers = []
        for i, row in enumerate(_rows(model_input)):
            session = GoSession(self.net, self.cfg, human_colour="black")
            for j, move in enumerate(_moves_of(row, session.n)):
                try:
                    action = session.action(move)
                except ValueError as exc:
                    raise _refuse(f"input {i}, move {j + 1}: {exc}") from None
                if session.state.is_terminal() or action not in session.state.legal_actions():
                    raise _refuse(f"input {i}, move {j + 1}: {move} is illegal in that position")
                session._apply(action)
            if session.state.is_terminal():
                raise _refuse(f"input {i}: the game is over (two passes or the move limit): no move to make")
            prior, value = session.policy_value()
            action = session.zero_choice(session.state)
            answers.append({"move": session.point_name(action), "player": COLOUR_NAMES[session.state.current_player()],
                            "value": float(value), "prior": float(prior[action])})
        return answers


class Clips(_TaskModel):
    """A generated clip per digit asked for, seeded, as 16-bit PCM WAV bytes in base64."""

    def predict(self, context, model_input, params=None):
        from dlzoo.demo.audio import generate, wav_bytes
        from dlzoo.errors import DataError

        params = params or {}
        seed = int(params.get("seed", 0))
        seconds = params.get("seconds")
        answers = []
        for i, row in enumerate(_rows(model_input)):
            digit = np.asarray(row).reshape(-1)
            if digit.size != 1 or float(digit[0]) != int(digit[0]):
                raise _refuse(f"input {i}: expected one digit (0-9), got {np.asarray(row).tolist()}")
            try:
                samples, rate = generate(self.net, self.cfg, int(digit[0]), seed + i,
                                         None if seconds in (None, 0) else float(seconds))
            except DataError as exc:
                raise _refuse(f"input {i}: {exc}") from None
            answers.append({"digit": int(digit[0]), "sample_rate": int(rate),
                            "wav_base64": base64.b64encode(wav_bytes(samples, rate)).decode("ascii")})
        return answers


KINDS = {"detections": Detections, "instances": Instances, "masks": Masks, "moves": Moves, "clips": Clips}


def signature(kind: str):
    """Inputs and params of each kind (the answers are lists of JSON objects, described in the module docstring)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    if kind in ("detections", "instances", "masks"):
        params = ParamSchema([ParamSpec("min_score", "double", 0.3)]) if kind != "masks" else None
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, -1, -1, 3))]), params=params)
    if kind == "moves":
        return ModelSignature(inputs=Schema([ColSpec("string")]))
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype("int64"), (-1,))]),
                          params=ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("seconds", "double", 0.0)]))
