"""Translate raw sentences with an exported dlzoo translator, one per line, stdin -> stdout.

    python -m dlzoo.translate --model artifacts/reports/translation-en-ja-transformer/translator.pt [--beam 5] < in.txt

The model file is one TorchScript module (encoder, decoder and greedy search, scripted) with its two
vocabularies and its direction stored inside (dlzoo.evaluation.translation.export_translator), so it loads
without dlzoo's model code. Input is tokenised like the corpus (dlzoo.data.enja's tokenisers). Each line is handled on its own: an empty line, a line
longer than `--max-tokens`, or bytes that are not UTF-8 give an empty output line and a note on stderr,
and the rest of the batch is translated as usual (output line i always answers input line i).
"""

from __future__ import annotations

import argparse
import sys

import torch

from dlzoo.data.enja import tokenizer_for
from dlzoo.errors import CheckpointError
from dlzoo.evaluation.translation import load_translator
from dlzoo.vocab import EOS, PAD


def translate_lines(lines: list[bytes], module, src_vocab, tgt_vocab, meta, beam: int = 1, max_tokens: int = 100,
                    batch_size: int = 64) -> tuple[list[str], list[str]]:
    """-> (one output line per input line, notes for the lines that could not be translated)."""
    from dlzoo.models.translation import beam_search

    src_lang, tgt_lang = meta["direction"].split("-")
    tokenize, detokenize = tokenizer_for(src_lang), tokenizer_for(tgt_lang).detokenize
    outputs, notes, todo = [""] * len(lines), [], []
    for i, raw in enumerate(lines):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            notes.append(f"line {i + 1}: not UTF-8 ({exc.reason} at byte {exc.start}); skipped")
            continue
        tokens = tokenize(text) if text.strip() else []
        if not tokens:
            notes.append(f"line {i + 1}: empty; skipped")
        elif len(tokens) > max_tokens:
            notes.append(f"line {i + 1}: {len(tokens)} tokens, over the limit of {max_tokens}; skipped")
        else:
            todo.append((i, src_vocab.encode(tokens) + [EOS]))
    todo.sort(key=lambda item: len(item[1]))  # similar lengths together: little padding
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            src = torch.full((len(chunk), max(len(ids) for _, ids in chunk)), PAD, dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                src[row, : len(ids)] = torch.tensor(ids)
            out = module(src) if beam == 1 else beam_search(module, src, beam)
            for (i, _), row in zip(chunk, out.tolist()):
                outputs[i] = detokenize(tgt_vocab.decode(row))
    return outputs, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlzoo.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="translator.pt written by the evaluate stage")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy, the exported search)")
    parser.add_argument("--max-tokens", type=int, default=100, help="longer input lines are skipped")
    args = parser.parse_args(argv)
    if args.beam < 1:
        parser.error("--beam must be >= 1")
    try:
        module, src_vocab, tgt_vocab, meta = load_translator(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = sys.stdin.buffer.read().splitlines()
    outputs, notes = translate_lines(lines, module, src_vocab, tgt_vocab, meta, args.beam, args.max_tokens)
    for note in notes:
        print(note, file=sys.stderr)
    sys.stdout.write("".join(o + "\n" for o in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
