"""LoRA training step: logits only where a token is trained vs the full vocabulary projection of every position,
LoRA dropout (0.05, the default) vs none, frozen base weights in bfloat16 vs float32, or, over bfloat16 base weights,
LoRA layers computing in bfloat16 under autocast vs in float32.

Run: ``.venv/bin/python benchmarks/lora_step.py [--vary logits|dropout|dtype|autocast] [--model local] [--batch 8]
[--length 300] [--answer 60]``. Rows are shaped like the optimizer's: a long prompt (profile + request) and a short
assistant answer at the end. The variants train LoRA (forward, backward, AdamW step), alternating, and the script
prints the median step time of each and their ratio (below 1: the candidate is faster). ``--vary dropout`` trains
with kept logits and swaps each LoRA layer's dropout for the identity in the candidate, as PEFT builds it for 0.
``--vary dtype`` trains two models with kept logits, one loaded in float32 (the CPU default) and one in bfloat16
(``train_kwargs={"dtype": "bfloat16"}``: PEFT keeps the LoRA weights and their optimizer state in float32), and
prints how far apart their first losses are. ``--vary autocast`` trains two models over bfloat16 base weights
without dropout: one as PEFT does by default (each LoRA layer casts its input to its float32 weights' dtype, and the
result back) and one under bfloat16 autocast with that casting off (what the trainer does for ``dtype="bfloat16"``),
and prints their last losses.
"""

import argparse
import functools

import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from side_by_side import median_times, print_ratio

import restpg_dspy
from restpg_dspy.serving.models import load_causal_lm
from restpg_dspy.training.trainer import assistant_token_losses


def full_logits_loss(model, inputs, labels):
    logits = model(**inputs).logits[:, :-1, :].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def kept_logits_loss(model, inputs, labels):
    token_loss, trained, _ = assistant_token_losses(model, inputs, labels)
    return (token_loss * trained).sum() / trained.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vary",
        choices=("logits", "dropout", "dtype", "autocast"),
        default="logits",
        help="what the variants differ in",
    )
    parser.add_argument("--model", default="local", help="'local' or 'local:<path>'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=300, help="tokens per row")
    parser.add_argument("--answer", type=int, default=60, help="trained (assistant) tokens at the end of each row")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    args = parser.parse_args()

    loaded = restpg_dspy.lm(args.model).engine.loaded

    def lora_model(dtype: torch.dtype, dropout: float = 0.05) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)  # the same LoRA initialisation in every variant
        model = get_peft_model(
            load_causal_lm(loaded.path, dtype, loaded.device),
            LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    model, optimizer = lora_model(torch.bfloat16, 0.0) if args.vary == "autocast" else lora_model(torch.float32)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, loaded.tokenizer.vocab_size, (args.batch, args.length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -args.answer :] = input_ids[:, -args.answer :]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def train_step(loss_fn, model=model, optimizer=optimizer):
        loss = loss_fn(model, inputs, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach().item()

    if args.vary == "logits":
        variants = {"full logits": full_logits_loss, "kept logits": kept_logits_loss}
        runs = {name: functools.partial(train_step, fn) for name, fn in variants.items()}
        candidate, baseline = "kept logits", "full logits"
    elif args.vary == "dtype":
        half, half_optimizer = lora_model(torch.bfloat16)
        first = {
            "float32": train_step(kept_logits_loss),
            "bfloat16": train_step(kept_logits_loss, half, half_optimizer),
        }
        print(f"first step's loss: float32 {first['float32']:.4f}, bfloat16 {first['bfloat16']:.4f}")
        runs = {
            "float32": functools.partial(train_step, kept_logits_loss),
            "bfloat16": functools.partial(train_step, kept_logits_loss, half, half_optimizer),
        }
        candidate, baseline = "bfloat16", "float32"
    elif args.vary == "autocast":
        mixed, mixed_optimizer = lora_model(torch.bfloat16, 0.0)

        def autocast_loss(model, inputs, labels):
            with (
                torch.autocast(torch.device(loaded.device).type, dtype=torch.bfloat16),
                disable_input_dtype_casting(model),
            ):
                return kept_logits_loss(model, inputs, labels)

        runs = {
            "float32 LoRA compute": functools.partial(train_step, kept_logits_loss),
            "bfloat16 autocast": functools.partial(train_step, autocast_loss, mixed, mixed_optimizer),
        }
        candidate, baseline = "bfloat16 autocast", "float32 LoRA compute"
    else:
        layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
        originals = [m.lora_dropout["default"] for m in layers]

        def with_dropout(enabled: bool) -> float:
            for layer, original in zip(layers, originals, strict=True):
                layer.lora_dropout["default"] = original if enabled else torch.nn.Identity()
            return train_step(kept_logits_loss)

        runs = {
            "dropout 0.05": functools.partial(with_dropout, True),
            "no dropout": functools.partial(with_dropout, False),
        }
        candidate, baseline = "no dropout", "dropout 0.05"
    results = median_times(runs, args.steps)

    print(f"model: {loaded.name}  batch: {args.batch} x {args.length} tokens, {args.answer} trained per row")
    print_ratio(results, candidate, baseline)
    print("last losses: " + ", ".join(f"{name} {loss:.3f}" for name, (_, loss) in results.items()))


if __name__ == "__main__":
    main()
