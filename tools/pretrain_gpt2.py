"""Pretrain the shipped tiny GPT-2 (data/gpt2_tiny/) on the synthetic corpus, deterministically.

    python tools/pretrain_gpt2.py                 # regenerates data/gpt2_tiny/ (about 25 minutes on 2 free cores)
    python tools/pretrain_gpt2.py --out /tmp/g --num-steps 50

Steps: generate the corpus (ftlab.tasks.corpus), train a byte-level BPE tokenizer on the
training split, pretrain a transformers ``GPT2LMHeadModel`` with ``ftlab.train.fit``, store the
weights as float16 safetensors, reload them and measure validation perplexity next to a unigram
baseline, then write ``metrics.json`` and the model card ``README.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ftlab.config import seed_everything
from ftlab.lm import lm_loader, packed_loader, perplexity, unigram_perplexity
from ftlab.measure import count_parameters
from ftlab.tasks.corpus import make_corpus
from ftlab.train import fit

ROOT = Path(__file__).resolve().parent.parent
EOS, PAD = "<|endoftext|>", "<|pad|>"
CHECK_DOCS = 32  # the fixed validation slice whose perplexity tests/test_zoo_gpt2.py recomputes

DEFAULTS = dict(vocab_size=3072, n_layer=4, n_embd=256, n_head=4, n_positions=256, num_steps=2000,
                batch_size=16, lr=2e-3, warmup_steps=100, seed=0,
                corpus_sizes={"train": 50000, "validation": 500, "test": 500})


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``, with eos/bos/unk and pad tokens.

    ``<|endoftext|>`` begins and ends documents; ``<|pad|>`` is a separate token so that padding
    can be masked without masking the end of a document.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=PAD)


def baseline_perplexity(train: list[str], texts: list[str], tokenizer) -> float:
    """The unigram baseline on exactly the tokens the model predicts: each document's tokens and its eos."""
    def ids(docs):
        return [t for doc in docs for t in tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]]
    return unigram_perplexity(ids(train), ids(texts), len(tokenizer))


def pretrain(out: Path, *, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
             num_steps: int, batch_size: int, lr: float, warmup_steps: int, seed: int, corpus_sizes: dict,
             sample_tokens: int = 120, progress: bool = True) -> dict:
    """Run every step above into the folder ``out`` and return the metrics written to ``metrics.json``.

    ``sample_tokens``: the length of the three samples written to the model card.
    """
    start, cpu_start = time.time(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    corpus = make_corpus(seed, corpus_sizes)
    tokenizer = train_tokenizer(corpus["train"], vocab_size)
    tokenizer.model_max_length = n_positions
    tokenizer.save_pretrained(out)

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    seed_everything(seed)
    model = GPT2LMHeadModel(config)
    train = packed_loader(corpus["train"], tokenizer, block_size=n_positions, batch_size=batch_size, shuffle=True,
                          seed=seed)
    history = fit(model, train, num_steps=num_steps, lr=lr, weight_decay=0.01, warmup_steps=warmup_steps,
                  max_grad_norm=1.0, device="cpu", progress=progress)
    train_seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start

    # store float16 (half the bytes) and measure the stored weights, as every user will load them
    model.to(torch.float16).save_pretrained(out)
    model = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32, use_safetensors=True).eval()
    metrics = {
        "parameters": count_parameters(model)["total"],
        "validation_perplexity": perplexity(model, lm_loader(corpus["validation"], tokenizer)),
        "test_perplexity": perplexity(model, lm_loader(corpus["test"], tokenizer)),
        "unigram_validation_perplexity": baseline_perplexity(corpus["train"], corpus["validation"], tokenizer),
        "check_docs": CHECK_DOCS,
        "check_perplexity": perplexity(model, lm_loader(corpus["validation"][:CHECK_DOCS], tokenizer, batch_size=8)),
        "train_loss_first_50": sum(history["loss"][:50]) / len(history["loss"][:50]),
        "train_loss_last_50": sum(history["loss"][-50:]) / len(history["loss"][-50:]),
        "train_loss_every_10": [round(x, 4) for x in history["loss"][::10]],
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "settings": dict(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                         n_positions=n_positions, num_steps=num_steps, batch_size=batch_size, lr=lr,
                         warmup_steps=warmup_steps, seed=seed, corpus_sizes=corpus_sizes),
    }
    torch.manual_seed(seed)
    bos = torch.tensor([[tokenizer.bos_token_id]])
    samples = model.generate(bos, attention_mask=torch.ones_like(bos), do_sample=True, top_k=50,
                             max_new_tokens=sample_tokens, num_return_sequences=3, pad_token_id=tokenizer.pad_token_id)
    metrics["samples"] = [tokenizer.decode(s[1:], skip_special_tokens=True) for s in samples]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "README.md").write_text(model_card(metrics))
    return metrics


def model_card(m: dict) -> str:
    """The model card: what the model is, how it was made, and what it measures."""
    s = m["settings"]
    samples = "\n\n".join("> " + text.replace("\n", "\n> ") for text in m["samples"])
    return f"""# gpt2_tiny: a {m['parameters'] / 1e6:.1f}M-parameter GPT-2 pretrained on a synthetic English

Loaded by `ftlab.zoo.load_gpt2()` (offline default). Architecture: transformers `GPT2LMHeadModel`,
{s['n_layer']} layers, {s['n_embd']} hidden, {s['n_head']} heads, {s['n_positions']} positions,
vocabulary {s['vocab_size']}, no dropout: {m['parameters']:,d} parameters (embedding and output
layer tied). Weights stored as float16 safetensors.

- **Data**: `ftlab.tasks.corpus.make_corpus(seed={s['seed']}, sizes={s['corpus_sizes']})`:
  stories, dialogues and word-game lessons from a grammar with about 2,300 word forms. Splits share
  no document.
- **Tokenizer**: byte-level BPE (`tokenizers`), {s['vocab_size']} tokens, trained on the training
  split; `<|endoftext|>` is bos and eos, `<|pad|>` pads. A document is `<|endoftext|> text <|endoftext|>`.
- **Training**: `ftlab.train.fit`, AdamW (lr {s['lr']}, weight decay 0.01), {s['warmup_steps']} warm-up
  steps then cosine decay, gradient norm clipped at 1, {s['num_steps']} steps of {s['batch_size']} rows of
  {s['n_positions']} tokens (documents packed end to end with `packed_loader`, no padding),
  seed {s['seed']}.
- **Time**: {m['train_seconds']:.0f} s wall clock and {m['train_cpu_seconds']:.0f} s of CPU time ({m['torch_threads']}
  threads) for corpus, tokenizer and training; the wall clock grows when other jobs share the cores.
- **Command**: `python tools/pretrain_gpt2.py`

## Results (measured on the stored float16 weights)

| | perplexity |
|---|---|
| validation ({s['corpus_sizes']['validation']} documents) | {m['validation_perplexity']:.3f} |
| test ({s['corpus_sizes']['test']} documents) | {m['test_perplexity']:.3f} |
| unigram baseline (token frequencies of the training split), validation | {m['unigram_validation_perplexity']:.2f} |

Training loss: {m['train_loss_first_50']:.3f} (mean of the first 50 steps) to {m['train_loss_last_50']:.3f}
(last 50). `metrics.json` holds every figure, the loss every 10 steps, and `check_perplexity`,
the perplexity of the first {m['check_docs']} validation documents, which the tests recompute.

## Samples (top-k 50 sampling from `<|endoftext|>`, seed {s['seed']})

{samples}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "gpt2_tiny")
    parser.add_argument("--num-steps", type=int, default=DEFAULTS["num_steps"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    args = parser.parse_args()
    settings = {**DEFAULTS, "num_steps": args.num_steps, "seed": args.seed}
    metrics = pretrain(args.out, **settings)
    print(json.dumps({k: v for k, v in metrics.items() if k != "train_loss_every_10"}, indent=1))


if __name__ == "__main__":
    main()
