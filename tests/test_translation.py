"""Translation: vocabularies, tokenisers, corpus preparation, bucketing, masking, decoding, export, CLI."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dlzoo.data.enja import (
    BucketBatchSampler, EnglishTokenizer, JapaneseTokenizer, TranslationDataModule, prepare, token_agreement,
)
from dlzoo.errors import CheckpointError, ConfigError, DataError, ExportError
from dlzoo.evaluation import translation as translation_evaluation
from dlzoo.evaluation.translation import check_export, export_translator, load_translator
from dlzoo.models.seq2seq import Seq2Seq
from dlzoo.models.translation import beam_search, warmup_schedule
from dlzoo.models.transformer import Transformer
from dlzoo.translate import main as translate_main
from dlzoo.translate import translate_lines
from dlzoo.vocab import BOS, EOS, PAD, SPECIALS, UNK, SubwordVocab, WordVocab

SENTENCES = [["i", "am", "a", "cat", "."], ["you", "are", "a", "dog", "."], ["i", "am", "here", "."]]


def tiny_nets():
    torch.manual_seed(0)
    return {
        "seq2seq": Seq2Seq(40, 50, 16, 16, attention="none"),
        "luong": Seq2Seq(40, 50, 16, 16, attention="luong"),
        "bahdanau": Seq2Seq(40, 50, 16, 16, attention="bahdanau", bidirectional=False),
        "transformer": Transformer(40, 50, d_model=16, heads=2, encoder_layers=2, decoder_layers=2, d_ff=32),
    }


def padded_batch():
    src = torch.randint(4, 40, (3, 7))
    src[0, -1] = EOS
    src[1, 4], src[1, 5:] = EOS, PAD
    src[2, 2], src[2, 3:] = EOS, PAD
    return src


# ---- vocabularies -------------------------------------------------------------------------------

def test_word_vocab_is_frequency_ordered_deterministic_and_maps_unknowns():
    vocab = WordVocab.build(SENTENCES, min_count=2)
    assert vocab.itos[:4] == SPECIALS
    assert vocab.itos[4:] == [".", "a", "am", "i"]  # by count, ties alphabetical
    assert WordVocab.build(list(reversed(SENTENCES)), min_count=2).itos == vocab.itos
    assert vocab.encode(["i", "am", "zebra"]) == [vocab.stoi["i"], vocab.stoi["am"], UNK]
    assert vocab.decode([BOS, vocab.stoi["i"], UNK, EOS, vocab.stoi["a"]]) == ["i", "<unk>"]
    assert len(WordVocab.build(SENTENCES, max_size=6)) == 6


def test_vocab_rejects_empty_corpus_and_bad_min_count():
    with pytest.raises(DataError, match="empty corpus"):
        WordVocab.build([[], []])
    with pytest.raises(ConfigError, match="min_count"):
        WordVocab.build(SENTENCES, min_count=0)


def test_subword_vocab_round_trips_words(tmp_path):
    corpus = [s for _ in range(30) for s in SENTENCES] + [["the", "quick", "brown", "fox", "jumps"]] * 5
    vocab = SubwordVocab.train(corpus, tmp_path / "spm", vocab_size=40)
    ids = vocab.encode(["i", "am", "a", "cat", "."])
    assert all(i >= 4 for i in ids) and vocab.sp.pad_id() == PAD and vocab.sp.eos_id() == EOS
    assert vocab.decode(ids + [EOS, 7]) == ["i", "am", "a", "cat", "."]


# ---- tokenisers -----------------------------------------------------------------------------------

def test_english_tokenizer_matches_corpus_conventions():
    tok = EnglishTokenizer()
    assert tok("I can't swim at ALL.") == ["i", "can", "'t", "swim", "at", "all", "."]
    assert tok("It's 5 o'clock, isn't it?")[:2] == ["it", "'s"]


def test_japanese_tokenizer_segments_and_agreement_is_measured():
    tok = JapaneseTokenizer()
    tokens = tok("私はテニス部員です。")
    assert "".join(tokens) == "私はテニス部員です。" and len(tokens) >= 4
    same = token_agreement(tok, [tok("彼は学生です。")])
    assert same["sentence_exact"] == 1.0 and same["token_f1"] == 1.0
    kytea_style = token_agreement(tok, [["送", "っ", "た", "。"]])  # KyTea splits inflections further
    assert kytea_style["token_recall"] < 1.0


# ---- corpus preparation and batching --------------------------------------------------------------

def write_corpus(root, train_en, train_ja, dev_en=None, dev_ja=None):
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in [("train.en", train_en), ("train.ja", train_ja), ("dev.en", dev_en or train_en[:3]), ("dev.ja", dev_ja or train_ja[:3])]:
        (root / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


def test_prepare_skips_empty_and_long_lines_counts_them_and_keeps_references(tmp_path):
    en = [f"i see {i} cats ." for i in range(40)] + ["", "a " * 60]
    ja = [f"猫 が {i} 匹 い る 。" for i in range(40)] + ["猫 。", "猫 " * 5]
    raw = write_corpus(tmp_path / "raw", en, ja)
    summary = prepare(str(tmp_path / "out"), raw_dir=str(raw), n_val=5, max_len=20)
    stats = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert stats["corpus"]["train"] == {"read": 42, "skipped_empty": 1, "skipped_long": 1}
    assert summary["pairs"] == {"train": 35, "val": 5, "test": 3}
    assert (tmp_path / "out" / "test.ja.txt").read_text(encoding="utf-8").splitlines()[0] == ja[0]
    dm = TranslationDataModule(str(tmp_path / "out"), direction="ja-en", batch_size=8)
    dm.setup()
    src, tgt_in, tgt_out = next(iter(dm.train_dataloader()))
    assert (tgt_in[:, 0] == BOS).all() and ((src == EOS).sum(1) == 1).all()
    assert torch.equal(tgt_in[:, 1:][tgt_out[:, :-1] != PAD], tgt_out[:, :-1][tgt_out[:, :-1] != PAD])


def test_prepare_rejects_misaligned_non_utf8_and_missing_corpora(tmp_path):
    raw = write_corpus(tmp_path / "a", ["a b", "c d"], ["あ"])
    with pytest.raises(DataError, match="must align"):
        prepare(str(tmp_path / "o1"), raw_dir=str(raw), n_val=1)
    raw = write_corpus(tmp_path / "b", ["a b", "c d"], ["あ", "い"])
    (raw / "train.en").write_bytes(b"a b\n\xff\xfe c\n")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare(str(tmp_path / "o2"), raw_dir=str(raw), n_val=1)
    with pytest.raises(DataError, match="dvc pull"):
        prepare(str(tmp_path / "o3"), raw_dir=str(tmp_path / "nowhere"))
    raw = write_corpus(tmp_path / "c", ["", " "], ["", ""], ["a"], ["b"])
    with pytest.raises(DataError, match="no usable sentence pairs"):
        prepare(str(tmp_path / "o4"), raw_dir=str(raw), n_val=1)


def test_bucket_sampler_covers_every_sentence_once_in_length_groups():
    lengths = np.random.default_rng(0).integers(3, 17, 1000).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=32, shuffle=True, seed=1)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(1000))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in first])
    assert spread <= 1.5  # vs ~13 for random batches
    assert list(sampler) != first  # reshuffled each epoch...
    assert list(BucketBatchSampler(lengths, 32, shuffle=True, seed=1)) == first  # ...but seeded


# ---- models: masking, decoding ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seq2seq", "luong", "bahdanau", "transformer"])
def test_padding_is_never_attended(name):
    net = tiny_nets()[name].eval()
    src, tgt = padded_batch(), torch.randint(4, 50, (3, 5))
    more_padding = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    assert torch.allclose(net.logits(src, tgt), net.logits(more_padding, tgt), atol=1e-5)
    if name != "seq2seq":
        memory, mask, state = net.encode(src)
        _, _, attention = net.decode_step(torch.full((3,), BOS), memory, mask, state, True)
        assert torch.all(attention[~mask] == 0) and torch.allclose(attention.sum(-1), torch.ones(3))


@pytest.mark.parametrize("name", ["seq2seq", "luong", "bahdanau", "transformer"])
def test_step_by_step_decoding_matches_teacher_forcing_and_beam_1_is_greedy(name):
    net = tiny_nets()[name].eval()
    src = padded_batch()
    greedy = net(src)
    tgt_in = torch.cat([torch.full((3, 1), BOS), greedy[:, :-1]], dim=1)
    before_end = torch.cat([torch.ones(3, 1, dtype=torch.bool), (greedy[:, :-1] != EOS).cumprod(1).bool()], 1) & (greedy != PAD)
    assert torch.equal(net.logits(src, tgt_in).argmax(-1)[before_end], greedy[before_end])
    assert torch.equal(beam_search(net, src, beam=1), greedy)
    beamed = beam_search(net, src, beam=4)
    assert beamed.shape[0] == 3 and beamed.max() < 50


def test_beam_search_finds_a_likelier_sequence_than_greedy():
    torch.manual_seed(3)
    net = Transformer(40, 50, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32).eval()
    src = padded_batch()

    def log_prob(ids):
        tgt_in = torch.cat([torch.full((3, 1), BOS), ids[:, :-1]], dim=1)
        lp = net.logits(src, tgt_in).log_softmax(-1).gather(-1, ids[:, :, None]).squeeze(-1)
        return (lp * (ids != PAD)).sum(1)

    greedy, beamed = net(src), beam_search(net, src, beam=8, length_penalty=0.0)
    assert (log_prob(beamed) >= log_prob(greedy) - 1e-4).all()


def test_warmup_schedule_rises_then_decays_to_zero():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_schedule(opt, total_steps=100, warmup_steps=10)
    factors = [sched.lr_lambdas[0](s) for s in (0, 9, 10, 55, 100)]
    assert factors[0] == pytest.approx(0.1) and factors[1] == pytest.approx(1.0) and factors[-1] == 0.0
    assert warmup_schedule(opt, 100, 10, decay="inverse_sqrt").lr_lambdas[0](39) == pytest.approx(0.5)


def test_bad_attention_and_direction_are_config_errors():
    with pytest.raises(ConfigError, match="attention"):
        Seq2Seq(10, 10, attention="dot")
    with pytest.raises(ConfigError, match="direction"):
        TranslationDataModule("x", direction="en-fr")


# ---- export and CLI -----------------------------------------------------------------------------

@pytest.fixture
def exported(tmp_path):
    src_vocab = WordVocab(SPECIALS + ["i", "can", "'t", "swim", "."] + [f"w{i}" for i in range(31)])
    tgt_vocab = WordVocab(SPECIALS + [f"t{i}" for i in range(46)])
    net = tiny_nets()["transformer"].eval()
    path = export_translator(net, src_vocab, tgt_vocab, "en-ja", tmp_path / "translator.pt", family="Transformer")
    return net, path


def test_export_round_trip_reproduces_greedy_output(exported):
    net, path = exported
    module, src_vocab, tgt_vocab, meta = load_translator(path)
    src = padded_batch()
    assert meta["direction"] == "en-ja" and len(src_vocab) == 40
    assert isinstance(module, torch.jit.ScriptModule)
    assert torch.equal(module(src), net(src))
    assert torch.equal(beam_search(module, src, 3), beam_search(net, src, 3))


def test_load_translator_rejects_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no translator"):
        load_translator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        load_translator(tmp_path / "junk.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="not a dlzoo translator"):
        load_translator(tmp_path / "other.pt")


def greedy_batches(net, n=4):
    """Decoding batches as the evaluator sees them: (src, tgt_in, tgt_out), with the in-process greedy ids."""
    torch.manual_seed(1)
    loader = [(padded_batch(), None, None) for _ in range(n)]
    with torch.no_grad():
        greedy = [row for src, _, _ in loader for row in net(src).tolist()]
    return loader, greedy


def test_export_check_passes_and_fails_with_the_file_named(tmp_path, monkeypatch):
    vocab = WordVocab(SPECIALS + [f"w{i}" for i in range(46)])
    net = tiny_nets()["transformer"].eval()
    loader, greedy = greedy_batches(net)
    path = tmp_path / "translator.pt"
    assert check_export(net, vocab, vocab, "en-ja", path, loader, greedy, 1.0) == 1.0

    wrong = [row[:-1] + [(row[-1] + 1) % 50] for row in greedy]  # what the export would have to reproduce
    with pytest.raises(ExportError, match=f"{path}.*0.0%"):
        check_export(net, vocab, vocab, "en-ja", path, loader, wrong, 1.0)

    def unloadable(net, src_vocab, tgt_vocab, direction, path, **meta):
        path.write_bytes(b"half a model")
        return path

    monkeypatch.setattr(translation_evaluation, "export_translator", unloadable)
    with pytest.raises(ExportError, match=f"exported translator {path} does not reload") as info:
        check_export(net, vocab, vocab, "en-ja", path, loader, greedy, 1.0)
    assert "\n" not in str(info.value)


def test_distillation_student_export_round_trips(tmp_path):
    """A student shaped like conf/compress/word-kd.yaml's, exported and reloaded in the process that scripted
    its teacher first (as the compress stage does), decodes several batches exactly like the module."""
    spec = yaml.safe_load((Path(__file__).parents[1] / "conf/compress/word-kd.yaml").read_text())["apply"]["student"]
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    vocab = WordVocab(SPECIALS + [f"w{i}" for i in range(46)])
    teacher = tiny_nets()["transformer"].eval()
    torch.jit.script(teacher)
    student = Transformer(len(vocab), len(vocab), **kwargs).eval()
    loader, greedy = greedy_batches(student)
    path = tmp_path / "translator.pt"
    assert check_export(student, vocab, vocab, "en-ja", path, loader, greedy, 1.0) == 1.0
    src = padded_batch()
    assert torch.equal(beam_search(load_translator(path)[0], src, 3), beam_search(student, src, 3))


def test_translate_handles_bad_lines_one_by_one(exported):
    _, path = exported
    module, src_vocab, tgt_vocab, meta = load_translator(path)
    lines = [b"I can't swim.", b"", b"\xff\xfe broken", b"swim " * 200, b"I can't."]
    outputs, notes = translate_lines(lines, module, src_vocab, tgt_vocab, meta, beam=2, max_tokens=100)
    assert len(outputs) == 5 and outputs[1] == outputs[2] == outputs[3] == ""
    assert outputs[0] and outputs[4]
    assert [n.split(":")[0] for n in notes] == ["line 2", "line 3", "line 4"]
    assert "not UTF-8" in notes[1] and "over the limit" in notes[2]


def test_translate_cli_end_to_end(exported, monkeypatch, capsys):
    _, path = exported
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"I can't swim.\n\nswim .\n")))
    assert translate_main(["--model", str(path)]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3 and "line 2: empty" in out.err
    assert translate_main(["--model", str(path.parent / "nope.pt")]) == 2
    assert "error: no translator" in capsys.readouterr().err



def test_translator_served_as_text_in_text_out(exported, tmp_path, monkeypatch):
    """The exported translator wrapped as an MLflow pyfunc (dlzoo.serving: the file, the tokenisers as code,
    pinned requirements), registered, then `mlflow models serve --env-manager local` on loopback: a list of
    sentences in, one translation each out, the same as dlzoo.translate in-process; a foreign file is refused
    before any run is opened."""
    import mlflow

    from conftest import served
    from dlzoo.serving import main as serving_main

    _, path = exported
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert serving_main(["--model", str(path), "--register", "translation-en-ja-tiny-text", "--tracking-uri", uri]) == 0
    module, src_vocab, tgt_vocab, meta = load_translator(path)
    sentences = ["I can't swim.", "", "swim ."]
    expected, _ = translate_lines([t.encode() for t in sentences], module, src_vocab, tgt_vocab, meta)
    assert expected[0] and expected[1] == ""
    mlflow.set_tracking_uri(uri)
    assert list(mlflow.pyfunc.load_model("models:/translation-en-ja-tiny-text/1").predict(sentences)) == expected
    tags = mlflow.search_runs(search_all_experiments=True, output_format="list")[0].data.tags
    assert tags["stage"] == "package" and tags["task"] == "translation-en-ja" and tags["source"] == str(path)
    assert tags["network"] == meta["family"] and tags["git_commit"]  # "unknown" here: tmp_path is no repository
    with served("models:/translation-en-ja-tiny-text/1", uri, tmp_path) as post:
        assert post(sentences) == expected

    (tmp_path / "junk.pt").write_bytes(b"not a model")
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    assert serving_main(["--model", str(tmp_path / "junk.pt"), "--tracking-uri", uri]) == 2
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


# ---- compression hooks (issue 5): dynamic int8 and word-level distillation of translators ---------

def test_dynamic_int8_translator_decodes_and_scripts():
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    net = tiny_nets()["transformer"].eval()
    qconfigs = {torch.nn.Linear: default_dynamic_qconfig, torch.nn.Embedding: float_qparams_weight_only_qconfig}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(net, qconfigs, dtype=torch.qint8)
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert any("quantized.dynamic" in k for k in kinds) and any("embedding_ops" in k for k in kinds)
    src = padded_batch()
    assert torch.equal(torch.jit.script(quantized)(src), quantized(src))
    assert beam_search(quantized, src, 2).shape[0] == 3


def test_word_level_distillation_step_uses_teacher_forcing_logits():
    from dlzoo.compression.distill import DistillModule, teacher_forcing_batch

    nets = tiny_nets()
    teacher, student = nets["transformer"], Transformer(40, 50, d_model=8, heads=2, encoder_layers=1, decoder_layers=1, d_ff=16)
    module = DistillModule(student, teacher, temperature=1.0, alpha=0.5, optimizer=None, batch=teacher_forcing_batch,
                           ignore_index=PAD, call="logits")
    src, tgt = padded_batch(), torch.randint(4, 50, (3, 6))
    tgt[0, 4:] = PAD
    batch = (src, torch.cat([torch.full((3, 1), BOS), tgt[:, :-1]], 1), tgt)
    module.log = lambda *args, **kwargs: None
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and student.out.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen


def test_translation_module_reads_its_vocabularies_without_the_data_package(tmp_path):
    import ast
    from functools import partial

    from dlzoo.models.translation import TranslationModule

    WordVocab(SPECIALS + ["i", "am"]).save(tmp_path / "vocab.en.json")
    WordVocab(SPECIALS + ["t0", "t1", "t2"]).save(tmp_path / "vocab.ja.json")
    module = TranslationModule(partial(Transformer, d_model=8, heads=2, encoder_layers=1, decoder_layers=1, d_ff=16),
                               partial(torch.optim.AdamW), str(tmp_path), direction="ja-en")
    assert module.net_kwargs() == {"src_vocab_size": 7, "tgt_vocab_size": 6}
    with pytest.raises(ConfigError, match="direction"):
        TranslationModule(partial(Transformer), partial(torch.optim.AdamW), str(tmp_path), direction="en-fr")
    with pytest.raises(DataError, match="prepare_enja"):
        TranslationModule(partial(Transformer), partial(torch.optim.AdamW), str(tmp_path / "missing"))

    # Models depend on dlzoo.vocab, never on the dataset code (which would pull DataModules into a model file).
    models = Path(__file__).parents[1] / "src/dlzoo/models"
    for path in models.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "dlzoo.data" or n.startswith("dlzoo.data.") for n in names), f"{path.name} imports {names}"
