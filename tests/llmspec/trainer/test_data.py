"""The data a run reads: numpy only, so that evaluation (which runs ONNX artifacts) can cut its
data as training does without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_data_and_evaluation_import_and_batch_without_torch(tmp_path: Path):
    (tmp_path / "corpus.txt").write_text("The cat sat on the mat.\n" * 40)
    code = (
        "import sys\n"
        "import llmspec.trainer.data, llmspec.inspect.evaluate\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "from llmspec.inspect.evaluate import make_batches\n"
        "from llmspec.spec.loading import load_spec\n"
        "from llmspec.tokenizer import load_for_spec\n"
        "spec = load_spec('specs/tiny-t5.yaml')\n"
        f"batches = make_batches(spec, load_for_spec(spec, {str(ROOT)!r}),"
        f" [{str(tmp_path / 'corpus.txt')!r}], batch_size=2, seq_len=32)\n"
        "assert batches and 'torch' not in sys.modules, 'batches'\n"
        "print(' '.join(sorted(batches[0])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [
        "attention_mask",
        "decoder_attention_mask",
        "decoder_input_ids",
        "input_ids",
        "labels",
    ]


def test_a_tokenizer_files_post_processor_does_not_frame_every_piece(tmp_path: Path):
    """An imported tokenizer.json may add [CLS] ... [SEP] to every text it encodes; the stream
    frames each document itself, once, so none of those land inside a document."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from llmspec.trainer.data import token_stream
    from llmspec.trainer.objectives import TokenIds

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "the": 3, "cat": 4, "sat": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    assert tokenizer.encode("the cat").ids == [1, 3, 4, 2]  # the file frames a text
    (tmp_path / "a.txt").write_text("the cat sat\n")
    (tmp_path / "b.txt").write_text("sat the cat\n")
    ids = TokenIds(vocab_size=len(vocab), eos=2)
    stream = token_stream([tmp_path / "a.txt", tmp_path / "b.txt"], tokenizer, ids, causal=True)
    assert stream.tolist() == [3, 4, 5, 2, 5, 3, 4, 2]  # one eos per document, no [CLS]
