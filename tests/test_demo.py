"""`make demo` in a real browser: the playground started as a user types it, on smoke champions, driven by
Playwright in headless Chromium (the system's package: nothing is downloaded).

Chromium comes from `apt-get install chromium` (.ci/run does it, then sets DLZOO_REQUIRE_CHROMIUM=1). Without it
the test skips and says why, unless DLZOO_REQUIRE_CHROMIUM=1, where a missing browser is a failure.
DLZOO_DEMO_SCREENSHOTS=<folder> keeps a screenshot of every tab there (docs/img for the docs' gallery).
The answer kinds (text, boxes, masks, moves, clips), served over HTTP one server each, run with `make test-e2e`
(marked e2e); the browser test with `make test`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, compose_config, prepare_data, user_env

TINY = ["data.prepare.n_train=32", "data.prepare.n_val=8", "data.prepare.n_test=16"]
# The tasks the tests serve and drive; the other tabs stay without a champion and must say what makes one.
SMOKE = {
    "translation-en-ja-transformer": ["data.prepare.limit_train=1000", "data.prepare.n_val=50"],
    "detection-shapes-ssd": TINY,
    "go-5x5-alphago-zero": [],
    "speech-fsdd-generation-wavenet": [],   # the classifier's evaluate stage cross-checks generated clips
    "speech-fsdd-classification-wavenet-classifier": [],
}
# Added to the same store for the served mask kinds (make test-e2e only).
MASKS = {"instance-shapes-maskrcnn": TINY, "segmentation-shapes-unet": TINY}
SENTENCE = "i can 't swim at all ."


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("DLZOO_REQUIRE_CHROMIUM") == "1":
            pytest.fail("DLZOO_REQUIRE_CHROMIUM=1 but Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium not installed: apt-get install chromium (root) enables the browser test")
    return path


def _train_and_champion(root: Path, recipes: dict) -> None:
    """Each recipe prepared, trained and evaluated at smoke size by the stages' own functions in `root`, then the
    champions stage over all that is there."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.tracking.champions import champions
    from dlzoo.training.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DVC_STAGE", raising=False)
        for recipe, overrides in recipes.items():
            cfg = compose_config(f"experiment={recipe}", "profile=smoke", *overrides)
            if cfg.get("data") is not None and cfg.data.get("prepare") is not None:
                prepare_data(cfg)
            train(cfg)
            evaluate(cfg)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            champions(compose(config_name="champions"))
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def smoke_champions(tmp_path_factory):
    """A project folder whose store holds smoke champions of the tasks above."""
    root = tmp_path_factory.mktemp("demo")
    (root / "data").symlink_to(REPO / "data")
    _train_and_champion(root, SMOKE)
    return root


@pytest.fixture(scope="module")
def mask_champions(smoke_champions):
    """The same store with smoke Mask R-CNN and U-Net champions added."""
    _train_and_champion(smoke_champions, MASKS)
    return smoke_champions


@pytest.mark.e2e   # a server start: with make test-e2e, to keep the default suite short
def test_the_translator_champion_is_served_as_text(smoke_champions):
    """`make serve TASK=translation-en-ja` (the champions stage's text answer) from a shell with nothing activated:
    sentences in, `dlzoo.translate`'s translations out; a beam out of range is refused with 400."""
    import json
    import urllib.error
    import urllib.request

    from conftest import served

    uri = f"sqlite:///{smoke_champions / 'mlflow.db'}"
    with served("models:/translation-en-ja@champion", uri, smoke_champions) as post:
        answer = post([SENTENCE, ""])
        request = urllib.request.Request(post.url, method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"inputs": [SENTENCE], "params": {"beam": 0}}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
    assert answer == [_expected_translation(smoke_champions, SENTENCE), ""]
    assert refused.value.code == 400 and "beam" in refused.value.read().decode()


def _ask(url: str, inputs, params: dict | None = None):
    """POST a request to a served model; (status, the answer's predictions or the error message)."""
    import json
    import urllib.error
    import urllib.request

    body = {"inputs": inputs, **({"params": params} if params else {})}
    request = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps(body).encode())
    try:
        return 200, json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"]
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read()).get("message", "")


def _served_champion(root: Path, task: str):
    """The served `models:/<task>@champion` and, in process, its trained network and train config."""
    from conftest import served
    from dlzoo.demo.registry import find

    uri = f"sqlite:///{root / 'mlflow.db'}"
    champion = find(task, uri)
    assert champion is not None and champion.tags.get("dlzoo.source_model")
    return served(f"models:/{task}@champion", uri, root), champion.network(), champion.config


@pytest.mark.e2e   # a server start each: with make test-e2e, to keep the default suite short
@pytest.mark.parametrize("task", ["detection-shapes", "instance-shapes", "segmentation-shapes"])
def test_the_vision_champions_answer_boxes_and_rle_masks(mask_champions, task):
    """`make serve TASK=<task>` answers an image (H x W x 3, 0-255) with what the network finds in process: boxes,
    class names and scores; instance masks and the segmentation as COCO RLE; a wrong shape is a 400."""
    from pycocotools import mask as coco_mask

    from dlzoo.demo import vision

    server, net, cfg = _served_champion(mask_champions, task)
    image = vision.shapes_image(cfg, 11)
    with server as post:
        status, answer = _ask(post.url, [image.tolist()], None if task == "segmentation-shapes" else {"min_score": 0.0})
        bad_status, message = _ask(post.url, [[[1, 2, 3]]])
    assert status == 200 and len(answer) == 1, answer
    assert bad_status == 400 and "shape" in message   # MLflow enforces the signature before the model sees it
    if task == "segmentation-shapes":
        expected = vision.segment(net, cfg, image)
        names = vision.class_names(cfg)
        decoded = {name: coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
                   for name, rle in answer[0]["classes"].items()}
        assert answer[0]["size"] == list(expected.shape)
        assert set(decoded) == {names[c] for c in np.unique(expected) if c != 0}
        for name, mask in decoded.items():
            assert np.array_equal(mask.astype(bool), expected == names.index(name))
        return
    found = (vision.detect if task == "detection-shapes" else vision.instances)(net, cfg, image, min_score=0.0)
    assert answer[0]["labels"] == [d["label"] for d in found]
    assert np.allclose(answer[0]["scores"], [d["score"] for d in found], atol=1e-5)
    assert np.allclose(np.reshape(answer[0]["boxes"], (-1, 4)), np.reshape([d["box"] for d in found], (-1, 4)),
                       atol=1e-3)
    if task == "detection-shapes":
        assert found, "a smoke SSD at min_score 0 still proposes boxes"
    else:
        for rle, d in zip(answer[0]["masks"], found):
            decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), d["mask"])


@pytest.mark.e2e   # a server start each: with make test-e2e, to keep the default suite short
def test_the_go_champion_answers_a_move_for_a_position(smoke_champions):
    """`make serve TASK=go-5x5` takes a move list or an SGF record and answers Zero's move (its own search, as in
    the evaluate stage); an illegal position or another board size is a 400 naming the move."""
    from dlzoo.demo.go_play import GoSession

    server, net, cfg = _served_champion(smoke_champions, "go-5x5")
    with server as post:
        status, answer = _ask(post.url, ["C3 D3", "(;FF[4]SZ[5];B[cc];W[dc])", ""])
        illegal, message = _ask(post.url, ["C3 C3"])
        other_size, size_message = _ask(post.url, ["(;FF[4]SZ[9];B[ee])"])
    assert status == 200 and len(answer) == 3, answer
    for row in answer[:2] + answer[2:]:
        assert set(row) == {"move", "player", "value", "prior"} and -1 <= row["value"] <= 1
    session = GoSession(net, cfg)
    session._apply(session.action("C3"))
    session._apply(session.action("D3"))
    assert answer[0]["move"] == session.point_name(session.zero_choice(session.state)) == answer[1]["move"]
    assert answer[0]["player"] == "Black" and answer[2]["player"] == "Black"
    assert illegal == 400 and "move 2" in message and "C3" in message
    assert other_size == 400 and "9x9" in size_message


@pytest.mark.e2e   # a server start each: with make test-e2e, to keep the default suite short
def test_the_wavenet_champion_answers_a_wav_clip(smoke_champions):
    """`make serve TASK=speech-fsdd-generation` answers digits with seeded clips as base64 WAV: the clip the
    generator makes in process with the same seed; a digit it does not know is a 400."""
    import base64
    import io

    import soundfile

    from dlzoo.demo.audio import generate

    server, net, cfg = _served_champion(smoke_champions, "speech-fsdd-generation")
    with server as post:
        status, answer = _ask(post.url, [3], {"seed": 5, "seconds": 0.05})
        bad, message = _ask(post.url, [12], {"seed": 5, "seconds": 0.05})
    assert status == 200 and answer[0]["digit"] == 3 and answer[0]["sample_rate"] == 8000
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(answer[0]["wav_base64"])), dtype="float32")
    expected, _ = generate(net, cfg, 3, 5, 0.05)
    assert len(samples) == len(expected) == 400 and np.abs(samples - expected).max() < 2 / 32767
    assert bad == 400 and "12" in message


@pytest.fixture(scope="module")
def demo(smoke_champions):
    """`make demo STORE=<the smoke store>` from a shell with nothing activated, on a free loopback port."""
    _chromium()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = smoke_champions / "mlflow.db"
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    started = time.perf_counter()
    server = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "demo", f"STORE={store}",
                               f"DEMO_PORT={port}"], env=user_env({"GRADIO_ANALYTICS_ENABLED": "False"}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"make demo ended with {server.returncode}: {server.stderr.read()[-2000:]}")
                if time.perf_counter() - started > 120:
                    pytest.fail("make demo did not answer within 120 s")
                time.sleep(0.5)
        yield {"url": url, "root": smoke_champions, "startup_s": time.perf_counter() - started}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before, "the playground wrote to the store"


def _write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _expected_translation(root: Path, sentence: str) -> str:
    """What `dlzoo.translate` answers with the evaluate stage's exported translator (greedy)."""
    from dlzoo.evaluation.translation import load_translator
    from dlzoo.translate import translate_lines

    module, src, tgt, meta = load_translator(root / "artifacts/reports/translation-en-ja-transformer/translator.pt")
    return translate_lines([sentence.encode()], module, src, tgt, meta, beam=1)[0][0]


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_text(page, selector: str, pattern: str, timeout: float = 60) -> str:
    """The element's text once it matches `pattern` (re.search)."""
    deadline = time.perf_counter() + timeout
    while True:
        text = _text(page, selector)
        if re.search(pattern, text):
            return text
        if time.perf_counter() > deadline:
            raise AssertionError(f"{selector}: {text!r} never matched {pattern!r}")
        time.sleep(0.25)


def _shot(page, name: str) -> None:
    folder = os.environ.get("DLZOO_DEMO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"demo-{name}.png"), full_page=True)


def test_the_playground_in_a_browser(demo, tmp_path):
    """Translate, detect, play Go and classify speech through the page, each checked against the model in process,
    and the bad inputs answered in the page; tabs without a champion name the make target that makes one."""
    from playwright.sync_api import sync_playwright

    from dlzoo.demo.go_play import GoSession

    root = demo["root"]
    times = {"startup": demo["startup_s"]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(demo["url"])
        page.get_by_role("tab", name="Translate").click()

        # translate: the page's answer is dlzoo.translate's; an empty text is one line in the tab
        page.locator("#translate-input textarea").fill(SENTENCE)
        t = time.perf_counter()
        page.locator("#translate-button").click()
        page.wait_for_function("document.querySelector('#translate-output textarea').value.length > 0", timeout=60000)
        times["translate"] = time.perf_counter() - t
        assert page.locator("#translate-output textarea").input_value() == _expected_translation(root, SENTENCE)
        assert "translation-en-ja" in page.inner_text("body") and "champion" in page.inner_text("body")
        _shot(page, "translate")
        page.locator("#translate-input textarea").fill("   ")
        page.locator("#translate-button").click()
        _wait_text(page, "#translate-status", "type an English sentence")

        # detect: a generated image gets boxes; Mask R-CNN and the U-Net have no champion here and say so;
        # an oversized upload and a non-image are refused with their names
        page.get_by_role("tab", name="Detect and segment").click()
        page.locator("#vision-min-score input[type=number]").fill("0")
        page.locator("#vision-min-score input[type=number]").press("Enter")
        page.locator("#vision-draw").click()
        page.wait_for_selector("#vision-input img", timeout=60000)
        t = time.perf_counter()
        page.locator("#vision-run").click()
        found = _wait_text(page, "#vision-detections", r"\d+ boxes")
        times["detect"] = time.perf_counter() - t
        assert int(re.search(r"(\d+) boxes", found).group(1)) > 0
        for family, task in (("Mask R-CNN", "instance-shapes"), ("U-Net", "segmentation-shapes")):
            assert family in found or f"No champion for {task}" in found.replace("`", "")
        page.wait_for_selector("#vision-boxes img", timeout=30000)
        _shot(page, "detect")
        big = tmp_path / "huge.png"
        from PIL import Image

        Image.new("RGB", (5000, 40)).save(big)
        page.locator("#vision-upload input[type=file]").set_input_files(str(big))
        _wait_text(page, "#vision-status", "huge.png")
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image")
        page.locator("#vision-upload input[type=file]").set_input_files(str(notes))
        _wait_text(page, "#vision-status", "notes.txt")
        page.wait_for_selector("#vision-boxes img", timeout=5000)   # what the tab showed stays

        # Go: a click on C3 is played, Zero's reply is legal in the game the page shows; an occupied point is refused
        page.get_by_role("tab", name="Play Go").click()
        page.locator("#go-new").click()
        board = page.locator("#go-board img")
        board.wait_for(timeout=60000)
        game = GoSession.__new__(GoSession)   # only its board geometry: no network needed to find a point
        game.n = 5
        x, y = GoSession.point_xy(game, 2, 2, 400)
        box = board.bounding_box()
        t = time.perf_counter()
        board.click(position={"x": x * box["width"] / 400, "y": y * box["height"] / 400})
        moves = _wait_text(page, "#go-moves", r"2\. W")
        times["go"] = time.perf_counter() - t
        _assert_legal_game(moves)
        _shot(page, "go")
        board.click(position={"x": x * box["width"] / 400, "y": y * box["height"] / 400})
        _wait_text(page, "#go-status", "occupied")
        assert _text(page, "#go-moves") == moves

        # speech: a test clip's probabilities sum to 1; a text file, a silent WAV are refused with their names
        page.get_by_role("tab", name="Spoken digits").click()
        clip = sorted((REPO / "data/fsdd").rglob("*.wav"))[0]
        t = time.perf_counter()
        page.locator("#speech-upload input[type=file]").set_input_files(str(clip))
        table = _wait_text(page, "#speech-probabilities", "sum:")
        times["speech"] = time.perf_counter() - t
        probabilities = [float(v) for v in re.findall(r"^\s*\d\s+([0-9.]+)\s*$", table, re.M)]  # the rendered table
        assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3, table
        _shot(page, "speech")
        silent = _write_wav(tmp_path / "silent.wav", np.zeros(4000))
        page.locator("#speech-upload input[type=file]").set_input_files(str(silent))
        _wait_text(page, "#speech-status", "silent.wav")
        page.locator("#speech-upload input[type=file]").set_input_files(str(notes))
        _wait_text(page, "#speech-status", "notes.txt")
        assert "sum:" in _text(page, "#speech-probabilities")   # the last good answer stays

        for tab, task in (("Control", "control-cartpole"), ("Digits", "digits"), ("Time series", "timeseries-sunspots")):
            page.get_by_role("tab", name=tab, exact=True).click()
            page.get_by_text(f"No champion for {task}").first.wait_for(timeout=10000)
            _shot(page, tab.lower().replace(" ", "-"))
        browser.close()
    print("playground seconds:", {k: round(v, 1) for k, v in times.items()})


def _assert_legal_game(moves: str) -> None:
    """Replay the page's move list ("1. B C3  2. W D4 ...") with OpenSpiel: every move legal in turn."""
    import pyspiel

    game = pyspiel.load_game("go", {"board_size": 5, "komi": 7.5})
    state = game.new_initial_state()
    played = re.findall(r"\d+\. ([BW]) (\w+)", moves)
    assert len(played) >= 2
    for colour, name in played:
        assert state.current_player() == (0 if colour == "B" else 1)
        legal = {state.action_to_string(state.current_player(), a).split()[-1].lower(): a
                 for a in state.legal_actions()}
        assert name.lower() in legal or (name == "pass" and "pass" in legal), f"{colour} {name} illegal: {moves}"
        state.apply_action(legal[name.lower()])
