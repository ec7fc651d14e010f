"""Small real models for the offline world, built and trained here from the corpus.

- a **T5** policy (``T5ForConditionalGeneration``, gated-gelu feed-forward like
  FLAN-T5) with a SentencePiece tokenizer trained on the corpus, fine-tuned on
  the train split with the project's prompt template;
- a **RoBERTa** reward model (``RobertaForSequenceClassification``) with
  ``id2label = {0: "nothate", 1: "hate"}`` exactly like Meta's, and a byte-level
  BPE tokenizer, trained on labelled sentences from the corpus generator.

Both are saved with ``save_pretrained`` so that later stages load them with the
``Auto*`` classes, as they load the Hub models.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
    get_linear_schedule_with_warmup,
)

from detox.builtin.corpus import labelled_sentences
from detox.params import BuiltinPolicy, BuiltinReward
from detox.reward_training import train_classifier

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
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="identity", character_coverage=1.0, hard_vocab_limit=False,
        user_defined_symbols=["#Person1#", "#Person2#"],
        num_threads=1, minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0), model.getvalue()


def _encode(tokenizer: T5Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def build_policy(
    train: pd.DataFrame, template: str, cfg: BuiltinPolicy, seed: int, out_dir: Path
) -> dict[str, float]:
    """Train tokenizer and T5 policy on ``train``; save both to ``out_dir``; return training stats."""
    torch.manual_seed(seed)
    tokenizer, sentencepiece_model = train_t5_tokenizer(
        [template.format(dialogue="")] + train["dialogue"].tolist() + train["summary"].tolist(), cfg.vocab_size
    )
    (out_dir / "spiece.model").write_bytes(sentencepiece_model)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
        feed_forward_proj="gated-gelu", dropout_rate=0.1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    sources = _encode(tokenizer, [template.format(dialogue=d) for d in train["dialogue"]], cfg.max_source_tokens)
    targets = _encode(tokenizer, train["summary"].tolist(), cfg.max_target_tokens)

    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(sources) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 20), total)
    model.train()
    losses: list[float] = []
    with tqdm(total=total, desc="train builtin policy", unit="step") as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(len(sources), generator=generator).tolist()
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                input_ids = _pad([sources[i] for i in batch], tokenizer.pad_token_id)
                labels = _pad([targets[i] for i in batch], -100)
                loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(),
                             labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    model.generation_config.max_new_tokens = cfg.max_target_tokens
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-steps_per_epoch:]
    return {"final_epoch_loss": sum(tail) / len(tail), "steps": total,
            "parameters": sum(p.numel() for p in model.parameters())}


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> RobertaTokenizer:
    """A byte-level BPE tokenizer with RoBERTa's special tokens and ids."""
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
        merges = [tuple(line.split(" ")) for line in (Path(tmp) / "merges.txt").read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def build_reward_model(cfg: BuiltinReward, seed: int, out_dir: Path) -> dict[str, float]:
    """Train a small RoBERTa hate classifier on generated sentences; save it to ``out_dir``."""
    torch.manual_seed(seed)
    sentences = labelled_sentences(cfg.num_sentences, seed, hard_share=cfg.hard_share)
    tokenizer = train_bpe_tokenizer(sentences["text"].tolist(), cfg.vocab_size)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
    )
    model = RobertaForSequenceClassification(config)
    stats = train_classifier(model, tokenizer, sentences["text"].tolist(), sentences["label"].tolist(),
                             cfg.training, seed, desc="builtin reward model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return stats
