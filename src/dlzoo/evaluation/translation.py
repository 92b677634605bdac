"""Translation quality on the dev split (never trained or selected on): corpus BLEU and chrF with sacrebleu
against the corpus' own tokens (tokenize='none', i.e. word-level BLEU as usually reported on this corpus),
greedy and beam; decoding speed; sample translations; attention heat-maps; and the TorchScript export,
checked to reproduce the in-process greedy output: an export that cannot be written, reloaded or decoded,
or that decodes differently, is an ExportError (the stage fails), since the file is what gets deployed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from dlzoo.errors import CheckpointError, ExportError
from dlzoo.evaluation.plots import plot_attention
from dlzoo.models.translation import beam_search
from dlzoo.vocab import BOS, EOS, SubwordVocab, WordVocab

FORMAT = "dlzoo-translator/1"
log = logging.getLogger(__name__)


def _vocab_files(vocab, name: str) -> dict[str, bytes]:
    if isinstance(vocab, SubwordVocab):
        return {f"{name}.json": json.dumps({"kind": "subword"}).encode(), f"{name}.model": vocab.sp.serialized_model_proto()}
    return {f"{name}.json": json.dumps({"kind": "word", "itos": vocab.itos}, ensure_ascii=False).encode()}


def export_translator(net: torch.nn.Module, src_vocab, tgt_vocab, direction: str, path: str | Path, **meta) -> Path:
    """Script `net` (a dlzoo Translator) and save it with everything `load_translator` needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(net.eval())
    files = {"meta.json": json.dumps({"format": FORMAT, "direction": direction, **meta}).encode()}
    files.update(_vocab_files(src_vocab, "src_vocab"))
    files.update(_vocab_files(tgt_vocab, "tgt_vocab"))
    tmp = path.with_suffix(".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files=files)
    tmp.replace(path)  # never leave half a model behind
    return path


def _vocab_from(files: dict[str, bytes], name: str):
    spec = json.loads(files[f"{name}.json"])
    if spec["kind"] == "subword":
        return SubwordVocab(model_proto=files[f"{name}.model"])
    return WordVocab(spec["itos"])


def load_translator(path: str | Path):
    """-> (scripted module, src vocab, tgt vocab, meta); a clear CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no translator at {path}: run `dvc repro evaluate_translation-en-ja-<family>` to export one")
    names = ["meta.json", "src_vocab.json", "tgt_vocab.json", "src_vocab.model", "tgt_vocab.model"]
    files = dict.fromkeys(names, b"")
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as exc:  # TorchScript raises RuntimeError/ValueError/zipfile errors for foreign files
        raise CheckpointError(f"{path} is not a TorchScript file ({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        meta = json.loads(files["meta.json"] or b"{}")
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is TorchScript but not a dlzoo translator export (no '{FORMAT}' metadata)")
    return module.eval(), _vocab_from(files, "src_vocab"), _vocab_from(files, "tgt_vocab"), meta


def decode_split(net, loader, tgt_vocab, decode) -> tuple[list[str], float, list[list[int]]]:
    """-> (hypotheses as space-joined corpus tokens, sentences per second, raw ids) for every batch of `loader`."""
    hyps, ids, n = [], [], 0
    start = time.perf_counter()
    with torch.no_grad():
        for src, _, _ in loader:
            out = decode(net, src).tolist()
            ids += out
            hyps += [" ".join(tgt_vocab.decode(row)) for row in out]
            n += src.size(0)
    return hyps, n / (time.perf_counter() - start), ids


def greedy_with_attention(net, src_row: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding of one sentence, keeping each step's attention over the source -> (ids, [T, S])."""
    memory, mask, state = net.encode(src_row[None])
    ys, rows = torch.tensor([[BOS]]), []
    with torch.no_grad():
        for _ in range(net.length_limit(src_row[None])):
            log_probs, state, attention = net.decode_step(ys[:, -1], memory, mask, state, True)
            token = int(log_probs.argmax(-1))
            ys, rows = torch.cat([ys, torch.tensor([[token]])], 1), rows + [attention[0]]
            if token == EOS:
                break
    return ys[0, 1:].tolist(), torch.stack(rows)


def check_export(net, src_vocab, tgt_vocab, direction: str, path: Path, loader, greedy_ids: list[list[int]],
                 min_match_rate: float) -> float:
    """Export `net`, reload the file and greedy-decode `loader` with it -> the share of sentences decoded exactly
    as `greedy_ids` (the in-process output on the same batches). Raises ExportError, naming the file, when the
    export cannot be written, reloaded or run, or matches below `min_match_rate`."""
    try:
        export_translator(net, src_vocab, tgt_vocab, direction, path, family=type(net).__name__)
    except Exception as exc:  # TorchScript reports unscriptable code as many exception types
        raise ExportError(f"could not export the translator to {path}: {_one_line(exc)}") from exc
    try:
        scripted = load_translator(path)[0]
        _, _, exported_ids = decode_split(scripted, loader, tgt_vocab, lambda n, s: n(s))
    except Exception as exc:  # a TorchScript runtime error carries the scripted traceback: keep its last line
        raise ExportError(f"the exported translator {path} does not reload and decode: {_one_line(exc)}") from exc
    rate = sum(a == b for a, b in zip(exported_ids, greedy_ids)) / max(len(greedy_ids), 1)
    if len(exported_ids) != len(greedy_ids) or rate < min_match_rate:
        raise ExportError(f"the exported translator {path} decodes {rate:.1%} of the test sentences as the model does "
                          f"(evaluator.min_greedy_match_rate = {min_match_rate:g})")
    return rate


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def evaluate(module, datamodule, out_dir: str | Path, beam: int = 5, batch_size: int = 100, n_samples: int = 25,
             n_heatmaps: int = 4, threads: int = 2, max_sentences: int | None = None,
             min_greedy_match_rate: float = 1.0) -> tuple[dict, list[Path]]:
    import sacrebleu

    torch.set_num_threads(threads)  # decoding speed is measured with a fixed thread count
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule.setup("test")
    net, src_vocab, tgt_vocab = module.net.eval(), module.src_vocab, module.tgt_vocab
    refs = datamodule.test_references()[:max_sentences]
    loader = datamodule.ordered_loader("test", batch_size, limit=max_sentences)

    greedy, greedy_speed, greedy_ids = decode_split(net, loader, tgt_vocab, lambda n, s: n(s))
    beamed, beam_speed, _ = decode_split(net, loader, tgt_vocab, lambda n, s: beam_search(n, s, beam))
    metrics = {
        "test/bleu": sacrebleu.corpus_bleu(greedy, [refs], tokenize="none").score,
        "test/chrf": sacrebleu.corpus_chrf(greedy, [refs]).score,
        "test/bleu_beam": sacrebleu.corpus_bleu(beamed, [refs], tokenize="none").score,
        "test/chrf_beam": sacrebleu.corpus_chrf(beamed, [refs]).score,
        "test/beam_size": float(beam),
        "test/sentences_per_s_greedy": greedy_speed,
        "test/sentences_per_s_beam": beam_speed,
        "test/ms_per_sentence_greedy": 1000.0 / greedy_speed,  # latency view of the same numbers (compression)
        "test/ms_per_sentence_beam": 1000.0 / beam_speed,
    }

    # Deployment: one scripted file, reloaded and checked against the in-process greedy search.
    export_path = out_dir / "translator.pt"
    metrics["export/greedy_match_rate"] = check_export(net, src_vocab, tgt_vocab, datamodule.direction, export_path,
                                                       loader, greedy_ids, min_greedy_match_rate)
    metrics["export/size_mb"] = export_path.stat().st_size / 2**20

    sources = [" ".join(src_vocab.decode(src[i].tolist())) for src, _, _ in loader for i in range(src.size(0))]
    samples = out_dir / "samples.md"
    rows = ["| # | source | reference | greedy | beam |", "|---|---|---|---|---|"]
    rows += [f"| {i} | {sources[i]} | {refs[i]} | {greedy[i]} | {beamed[i]} |" for i in range(min(n_samples, len(refs)))]
    samples.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out_dir / "hypotheses.greedy.txt").write_text("".join(h + "\n" for h in greedy), encoding="utf-8")

    files = [samples, out_dir / "hypotheses.greedy.txt", export_path]
    test = datamodule.datasets["test"]
    if net.attends:  # the no-attention baseline has no weights to show
        for i in range(min(n_heatmaps, len(test))):
            src_row = torch.cat([test[i][0], torch.tensor([EOS])])
            ids, attention = greedy_with_attention(net, src_row)
            files.append(plot_attention(attention.float().numpy(), src_vocab.decode(src_row.tolist()) + ["</s>"],
                                        tgt_vocab.decode(ids) + (["</s>"] if EOS in ids else []), out_dir / f"attention_{i}.png",
                                        title=f"{type(net).__name__} attention, dev sentence {i}"))
    return metrics, files
