"""`make demo`: a Gradio page with one tab per task, each asking that task's champion from the registry.

    make demo                                   # http://127.0.0.1:7860 over mlflow.db
    python -m dlzoo.demo --store sqlite:///mlflow-smoke.db --port 7861

Models load on a tab's first use, so the page starts without waiting for all of them. Every handler turns a
user's mistake (and any other failure) into one line in its tab's status box; what the tab showed stays.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import gradio as gr
import numpy as np

from dlzoo.demo import answers
from dlzoo.demo.registry import Champion, find, headline_metrics, missing_line

log = logging.getLogger("dlzoo.demo")

TASKS = {
    "translate": ["translation-en-ja"],
    "vision": ["detection-shapes", "instance-shapes", "segmentation-shapes"],
    "go": ["go-5x5"],
    "speech": ["speech-fsdd-classification", "speech-fsdd-generation"],
    "control": ["control-cartpole", "control-acrobot"],
    "digits": ["digits"],
    "timeseries": ["timeseries-sunspots", "timeseries-sine"],
}


def guarded(n_outputs: int):
    """Run a handler; on failure leave its outputs as they were and put one line in the last one (the status)."""

    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except (ValueError, OSError) as exc:  # DlzooError's kin and MLflow's input errors are user-facing
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            except Exception as exc:  # never a traceback in the page: the log keeps it
                log.exception("%s failed", fn.__name__)
                message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            skipped = [gr.skip() for _ in range(n_outputs - 1)]
            return (*skipped, f"⚠ {message}") if skipped else f"⚠ {message}"

        return handler

    return wrap


class Champions:
    """The tasks' champions in one store, each model loaded once, on first use."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        metrics = headline_metrics()
        self.found: dict[str, Champion | None] = {
            task: find(task, tracking_uri, metrics.get(task)) for tasks in TASKS.values() for task in tasks}

    def header(self, task: str) -> str:
        champion = self.found.get(task)
        return f"`{task}` {champion.headline}" if champion else missing_line(task)

    def require(self, task: str) -> Champion:
        champion = self.found.get(task)
        if champion is None:
            raise ValueError(missing_line(task).replace("`", ""))
        return champion

    @functools.cache
    def pyfunc(self, task: str):
        return self.require(task).pyfunc()

    @functools.cache
    def network(self, task: str):
        return self.require(task).network()

    def config(self, task: str):
        return self.require(task).config


def _translate_tab(c: Champions) -> None:
    task = "translation-en-ja"
    gr.Markdown(c.header(task))
    text = gr.Textbox(label="English", placeholder="I can't swim at all.", elem_id="translate-input")
    search = gr.Radio(["greedy", "beam 5"], value="greedy", label="search", elem_id="translate-search")
    go = gr.Button("Translate", elem_id="translate-button")
    out = gr.Textbox(label="Japanese", interactive=False, elem_id="translate-output")
    status = gr.Markdown(elem_id="translate-status")

    @guarded(2)
    def run(sentence, how):
        return answers.translate(c.pyfunc(task), sentence, beam=1 if how == "greedy" else 5), ""

    go.click(run, [text, search], [out, status])
    text.submit(run, [text, search], [out, status])


def _vision_tab(c: Champions) -> None:
    from dlzoo.demo import vision

    detection, instance, segmentation = TASKS["vision"]
    for task in TASKS["vision"]:
        gr.Markdown(c.header(task))
    with gr.Row():
        upload = gr.File(label="an image (PNG or JPEG)", elem_id="vision-upload")
        seed = gr.Number(value=0, precision=0, label="or a shapes image drawn with seed", elem_id="vision-seed")
        min_score = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="minimum score", elem_id="vision-min-score")
    with gr.Row():
        draw = gr.Button("Draw a shapes image", elem_id="vision-draw")
        run = gr.Button("Detect and segment", variant="primary", elem_id="vision-run")
    image = gr.State(None)
    with gr.Row():
        shown = gr.Image(label="input", interactive=False, elem_id="vision-input")
        boxes = gr.Image(label="detector: boxes", interactive=False, elem_id="vision-boxes")
        masks = gr.Image(label="Mask R-CNN: instances", interactive=False, elem_id="vision-instances")
        semantic = gr.Image(label="U-Net: mask", interactive=False, elem_id="vision-mask")
    found = gr.Markdown(elem_id="vision-detections")
    status = gr.Markdown(elem_id="vision-status")

    @guarded(3)
    def drawn(s):
        picture = vision.shapes_image(c.config(segmentation if c.found[detection] is None else detection), int(s))
        return picture, picture, ""

    @guarded(3)
    def uploaded(f):
        if f is None:
            return None, None, ""
        task = next((t for t in TASKS["vision"] if c.found[t]), detection)
        picture = vision.read_image(f if isinstance(f, str) else f.name, c.config(task))
        return picture, picture, ""

    @guarded(5)
    def detect(picture, score):
        if picture is None:
            raise ValueError("upload an image or draw a shapes image first")
        outputs, lines = [], []
        if c.found[detection]:
            found_boxes = vision.detect(c.network(detection), c.config(detection), picture, min_score=float(score))
            outputs.append(vision.draw_boxes(picture, found_boxes))
            lines.append(f"**detector ({c.found[detection].family})**: {len(found_boxes)} boxes: " + ", ".join(
                f"{d['label']} {d['score']:.2f}" for d in found_boxes[:20]))
        else:
            outputs.append(None)
            lines.append(missing_line(detection))
        if c.found[instance]:
            found_instances = vision.instances(c.network(instance), c.config(instance), picture, min_score=float(score))
            outputs.append(vision.draw_instances(picture, found_instances))
            lines.append(f"**Mask R-CNN**: {len(found_instances)} instances")
        else:
            outputs.append(None)
            lines.append(missing_line(instance))
        if c.found[segmentation]:
            mask = vision.segment(c.network(segmentation), c.config(segmentation), picture)
            outputs.append(vision.draw_mask(picture, mask))
            lines.append(f"**U-Net**: {int((mask > 0).sum())} foreground pixels")
        else:
            outputs.append(None)
            lines.append(missing_line(segmentation))
        return (*outputs, "\n\n".join(lines), "")

    draw.click(drawn, [seed], [image, shown, status])
    # the drop zone is emptied after each upload (the input panel shows the image), so the next file can follow
    upload.upload(uploaded, [upload], [image, shown, status]).then(lambda: None, None, upload)
    run.click(detect, [image, min_score], [boxes, masks, semantic, found, status])


def _go_tab(c: Champions) -> None:
    from dlzoo.demo.go_play import GoSession

    task = "go-5x5"
    gr.Markdown(c.header(task) + "  \nClick a point to play; the heat map is the network's move probabilities.")
    size = 400
    session = gr.State(None)
    with gr.Row():
        colour = gr.Radio(["black", "white"], value="black", label="you play", elem_id="go-colour")
        new = gr.Button("New game", elem_id="go-new")
        passed = gr.Button("Pass", elem_id="go-pass")
    board = gr.Image(label="board", interactive=False, height=size, width=size, elem_id="go-board")
    moves = gr.Markdown(elem_id="go-moves")
    status = gr.Markdown(elem_id="go-status")

    def view(game):
        policy, value = game.policy_value()
        return (game, game.board_image(size), f"moves: {game.move_list()}",
                f"{game.status()} (network's value for the side to move: {value:+.2f})")

    @guarded(4)
    def start(who):
        game = GoSession(c.network(task), c.config(task), human_colour=who)
        game.new_game()
        return view(game)

    @guarded(4)
    def click(game, evt: gr.SelectData):
        if game is None:
            raise ValueError("press New game first")
        point = game.point_at(evt.index[0], evt.index[1], size)
        if point is None:
            raise ValueError("click on a point of the board")
        game.play(point)
        return view(game)

    @guarded(4)
    def pass_move(game):
        if game is None:
            raise ValueError("press New game first")
        game.play("pass")
        return view(game)

    new.click(start, [colour], [session, board, moves, status])
    board.select(click, [session], [session, board, moves, status])
    passed.click(pass_move, [session], [session, board, moves, status])


def _speech_tab(c: Champions) -> None:
    from dlzoo.demo import audio

    classify_task, generate_task = TASKS["speech"]
    gr.Markdown(c.header(classify_task))
    with gr.Row():
        upload = gr.File(label="a WAV file (classified on upload)", elem_id="speech-upload")
        record = gr.Audio(sources=["microphone"], type="filepath", label="or record", elem_id="speech-record")
    classify = gr.Button("Classify the recording", variant="primary", elem_id="speech-classify")
    with gr.Row():
        label = gr.Label(num_top_classes=10, label="probabilities", elem_id="speech-label")
        wave = gr.Image(label="waveform and spectrogram", interactive=False, elem_id="speech-wave")
    table = gr.Markdown(elem_id="speech-probabilities")
    gr.Markdown(c.header(generate_task))
    with gr.Row():
        digit = gr.Number(value=7, precision=0, label="digit", elem_id="speech-digit")
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="speech-seed")
        generate = gr.Button("Generate", elem_id="speech-generate")
    with gr.Row():
        clip = gr.Audio(label="generated clip", interactive=False, elem_id="speech-clip")
        clip_wave = gr.Image(label="generated waveform and spectrogram", interactive=False, elem_id="speech-clip-wave")
    status = gr.Markdown(elem_id="speech-status")

    @guarded(4)
    def run(path):
        if not path:
            raise ValueError("upload or record a WAV first")
        path = path if isinstance(path, str) else path.name
        cfg = c.config(classify_task)
        samples = audio.read_wav(path, cfg)
        probs = audio.classify(c.pyfunc(classify_task), samples, cfg)
        rate = int(audio.sample_rate(cfg))
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in probs.items())
        return (probs, audio.waveform_image(samples, rate, "input"),
                f"| digit | probability |\n|---|---|\n{rows}\n\nsum: {sum(probs.values()):.6f}", "")

    @guarded(3)
    def make(d, s):
        d = int(d)
        if not 0 <= d <= 9:
            raise ValueError(f"digit {d}: choose 0 to 9")
        samples, rate = audio.generate(c.network(generate_task), c.config(generate_task), d, int(s))
        return (rate, (samples * 32767).astype(np.int16)), audio.waveform_image(samples, rate, f"generated {d}"), ""

    upload.upload(run, [upload], [label, wave, table, status]).then(lambda: None, None, upload)
    classify.click(run, [record], [label, wave, table, status])
    generate.click(make, [digit, seed], [clip, clip_wave, status])


def _control_tab(c: Champions) -> None:
    gr.Markdown("\n\n".join(c.header(t) for t in TASKS["control"]))
    with gr.Row():
        task = gr.Dropdown(TASKS["control"], value=TASKS["control"][0], label="task", elem_id="control-task")
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="control-seed")
        go = gr.Button("Run an episode", variant="primary", elem_id="control-run")
    gif = gr.Image(label="episode", interactive=False, elem_id="control-episode")
    result = gr.Markdown(elem_id="control-return")
    status = gr.Markdown(elem_id="control-status")

    @guarded(3)
    def run(t, s):
        import tempfile

        data, total, steps = answers.episode(c.pyfunc(t), c.config(t), int(s))
        path = os.path.join(tempfile.mkdtemp(prefix="dlzoo-demo-"), "episode.gif")
        with open(path, "wb") as f:
            f.write(data)
        return path, f"return **{total:.1f}** in {steps} steps (seed {int(s)})", ""

    go.click(run, [task, seed], [gif, result, status])


def _digits_tab(c: Champions) -> None:
    task = "digits"
    gr.Markdown(c.header(task) + "  \nDraw a digit (it is cropped and shrunk to the 8x8 grid the network reads).")
    with gr.Row():
        pad = gr.Sketchpad(label="draw", canvas_size=(256, 256), type="numpy", elem_id="digits-pad")
        with gr.Column():
            index = gr.Number(value=0, precision=0, label="or test image number", elem_id="digits-index")
            pick = gr.Button("Classify test image", elem_id="digits-pick")
            drawn = gr.Button("Classify drawing", variant="primary", elem_id="digits-classify")
    with gr.Row():
        seen = gr.Image(label="what the network sees (8x8)", interactive=False, elem_id="digits-seen")
        label = gr.Label(num_top_classes=10, label="probabilities", elem_id="digits-label")
    status = gr.Markdown(elem_id="digits-status")

    @guarded(3)
    def from_pad(sketch):
        x = answers.digit_from_sketch(sketch)
        return answers.digit_image(x), answers.probabilities(c.pyfunc(task), x), ""

    @guarded(3)
    def from_test(i):
        x, truth = answers.test_digit(c.config(task), int(i))
        return answers.digit_image(x), answers.probabilities(c.pyfunc(task), x), f"true label: {truth}"

    drawn.click(from_pad, [pad], [seen, label, status])
    pick.click(from_test, [index], [seen, label, status])


def _timeseries_tab(c: Champions) -> None:
    gr.Markdown("\n\n".join(c.header(t) for t in TASKS["timeseries"]))
    with gr.Row():
        task = gr.Dropdown(TASKS["timeseries"], value=TASKS["timeseries"][0], label="series", elem_id="ts-task")
        steps = gr.Slider(1, 10, value=1, step=1, label="steps ahead", elem_id="ts-steps")
        go = gr.Button("Forecast the test part", variant="primary", elem_id="ts-run")
    plot = gr.Image(label="forecast against the truth", interactive=False, elem_id="ts-plot")
    result = gr.Markdown(elem_id="ts-result")
    status = gr.Markdown(elem_id="ts-status")

    @guarded(3)
    def run(t, k):
        image, stats = answers.forecast(c.pyfunc(t), c.config(t), int(k))
        return image, f"mean absolute error {stats['mae']:.3f} over {stats['points']} test points", ""

    go.click(run, [task, steps], [plot, result, status])


TABS = [("Translate", _translate_tab), ("Detect and segment", _vision_tab), ("Play Go", _go_tab),
        ("Spoken digits", _speech_tab), ("Control", _control_tab), ("Digits", _digits_tab),
        ("Time series", _timeseries_tab)]


def build(tracking_uri: str) -> gr.Blocks:
    """The page over the champions in `tracking_uri` (read only)."""
    champions = Champions(tracking_uri)
    with gr.Blocks(title="dlzoo playground", analytics_enabled=False) as page:
        gr.Markdown(f"# dlzoo playground\nThe champions of `{tracking_uri}`: each tab asks the task's "
                    "`models:/<task>@champion`, the family whose held-out number is shown.")
        for title, tab in TABS:
            with gr.Tab(title, elem_id=f"tab-{title.lower().replace(' ', '-')}"):
                tab(champions)
    return page


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m dlzoo.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="the tracking store the champions are registered in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if args.store.startswith("sqlite:///"):
        # the runs' configs name data and report folders relative to the project folder, the store's own
        store = Path(args.store.removeprefix("sqlite:///")).resolve()
        if not store.is_file():
            print(f"error: {store}: no such store (make repro, or make try, makes one)", file=sys.stderr)
            return 2
        os.chdir(store.parent)
        args.store = f"sqlite:///{store}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start = time.perf_counter()
    page = build(args.store)
    log.info("page built in %.1f s; serving on http://%s:%d", time.perf_counter() - start, args.host, args.port)
    page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, quiet=True)
    return 0
