"""Small real models for the offline world: their tokenizers and untrained configurations.

- a **T5** policy (``T5ForConditionalGeneration``, gated-gelu feed-forward like
  FLAN-T5) with a SentencePiece tokenizer trained on the corpus; the sft stage
  trains it on the train split with the project's prompt template;
- a **RoBERTa** reward model (``RobertaForSequenceClassification``) with
  ``id2label = {0: "nothate", 1: "hate"}`` exactly like Meta's, and a byte-level
  BPE tokenizer; the reward stage trains it on the labelled sentences.

The fetch stage writes them with ``save_pretrained`` (configuration and tokenizer, no
weights) so that the training stages load them with the ``Auto*`` classes, as they
load the Hub models.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import RobertaConfig, RobertaTokenizer, T5Config, T5Tokenizer

from detox.common.params import BuiltinPolicy, BuiltinReward

log = logging.getLogger(__name__)

ID2LABEL = {0: "nothate", 1: "hate"}


def train_t5_tokenizer(texts: list[str], vocab_size: int) -> tuple[T5Tokenizer, bytes]:
    """Train a SentencePiece unigram model with T5's special ids (pad 0, eos 1, unk 2).

    Returns the tokenizer and the serialized SentencePiece model. Training reads from an
    iterator and writes to memory, so no temporary path ends up in the model (which
    would make two identical runs differ).
    """
    lines = [line for text in texts for line in text.splitlines()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        normalization_rule_name="identity",
        character_coverage=1.0,
        hard_vocab_limit=False,
        user_defined_symbols=["#Person1#", "#Person2#"],
        num_threads=1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0), model.getvalue()


def write_policy_base(train: pd.DataFrame, template: str, cfg: BuiltinPolicy, out_dir: Path) -> dict[str, int]:
    """Train the SentencePiece tokenizer on ``train``; save it and the untrained T5 configuration to ``out_dir``.

    No weights: the sft stage initialises the model from this configuration and trains it.
    """
    tokenizer, sentencepiece_model = train_t5_tokenizer(
        [template.format(dialogue="")] + train["dialogue"].tolist() + train["summary"].tolist(), cfg.vocab_size
    )
    (out_dir / "spiece.model").write_bytes(sentencepiece_model)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        feed_forward_proj=cfg.feed_forward_proj,
        dropout_rate=cfg.dropout_rate,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        architectures=["T5ForConditionalGeneration"],
    )
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"vocab_size": len(tokenizer)}


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> RobertaTokenizer:
    """A byte-level BPE tokenizer with RoBERTa's special tokens and ids."""
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
        merges = [
            tuple(line.split(" "))
            for line in (Path(tmp) / "merges.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#version")
        ]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def write_reward_base(texts: list[str], cfg: BuiltinReward, out_dir: Path) -> dict[str, int]:
    """Train the BPE tokenizer on ``texts``; save it and the untrained RoBERTa configuration to ``out_dir``.

    No weights: the reward stage initialises the classifier from this configuration and trains it.
    """
    tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
        architectures=["RobertaForSequenceClassification"],
    )
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"vocab_size": len(tokenizer)}
