"""The PPO policy: a seq2seq model with LoRA adapters plus a value head (ppo only: rloo and grpo build none).

The reference model is the same weights with the adapters disabled, so only one
copy of the base model is in memory. With ``ppo.lora.enabled: false`` the whole
model is trained and a frozen copy serves as the reference.

With ``ppo.lora.scope: decoder`` the adapters sit in the decoder only. The encoder
is then the same function for the policy, the reference and every PPO epoch, so
the engine encodes each prompt once per step and passes ``encoder_hidden`` to
``forward`` (the encoder is usually most of the FLOPs: prompts are long, summaries
short).
"""

from __future__ import annotations

import copy
import json
import os
import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from detox.common.params import PPOParams
from detox.models.attention import use_attention

VALUE_HEAD_FILE = "value_head.safetensors"
POLICY_FILE = "ppo_policy.json"


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout probability: PPO's log-probs must equal those the rollout sampled from."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class ValueHead(nn.Module):
    """A scalar value per decoder position, from the decoder's last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class Seq2SeqPolicy(nn.Module):
    """Policy (LoRA or full) + value head, with the reference model behind ``reference()``."""

    def __init__(self, base: PreTrainedModel, cfg: PPOParams) -> None:
        super().__init__()
        self.uses_lora, self.algorithm = cfg.lora.enabled, cfg.algorithm
        if cfg.disable_dropout:
            disable_dropout(base)
        if self.uses_lora:
            lora = LoraConfig(
                task_type=TaskType.SEQ_2_SEQ_LM,
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=0.0 if cfg.disable_dropout else cfg.lora.dropout,
                target_modules=lora_targets(cfg.lora.target_modules, cfg.lora.scope),
                modules_to_save=[f"decoder.{m}" if cfg.lora.scope == "decoder" else m for m in cfg.lora.train_modules]
                or None,
            )
            self.model = get_peft_model(base, lora)
            self.frozen_reference = None
        else:
            self.frozen_reference = copy.deepcopy(base).eval().requires_grad_(False)
            self.model = base
        # Critic-free algorithms have no value head at all: nothing to build, step, save or hold in memory.
        self.value_head = ValueHead(base.config.d_model) if cfg.uses_value_head else None
        encoder = base.get_encoder()
        # True when nothing in the encoder trains: its output is then a constant of the prompt.
        self.encoder_frozen = not any(p.requires_grad for p in encoder.parameters())

    @property
    def config(self) -> PretrainedConfig:
        """The transformers config of the base model."""
        return self.model.config

    def reference(self) -> AbstractContextManager[None]:
        """Context in which ``self.model`` computes the reference policy (LoRA only)."""
        return self.model.disable_adapter() if self.uses_lora else nullcontext()

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The policy encoder's last hidden state (B, S, d), to pass as ``encoder_hidden``.

        It stays valid after an optimizer step only when ``encoder_frozen``.
        """
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        with_values: bool = True,
        reference: bool = False,
        encoder_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for each response position, and values (B, T) (None without a value head).

        ``encoder_hidden`` (from :meth:`encode`) skips the encoder; it is the same for the
        policy and the reference because the encoder has no adapters.
        """
        inputs: dict[str, object] = {"attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}
        if encoder_hidden is None:
            inputs["input_ids"] = input_ids
        else:
            inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=encoder_hidden)
        if reference and not self.uses_lora:
            return self.frozen_reference(**inputs).logits, None
        context = self.reference() if reference else nullcontext()
        with_values = with_values and self.value_head is not None
        with context:
            out = self.model(**inputs, output_hidden_states=with_values)
        values = self.value_head(out.decoder_hidden_states[-1]) if with_values else None
        return out.logits, values

    def generator(self) -> PreTrainedModel:
        """The model to call ``generate`` on (the policy, adapters enabled)."""
        return self.model

    def store_frozen_weights(self, dtype: torch.dtype) -> int:
        """Keep every frozen ``nn.Linear``'s weight and bias in ``dtype``, the autocast's; return how many layers.

        For a policy that runs under one autocast only (the PPO engine's ``ppo.precision`` bf16 or fp16).
        Autocast multiplies a linear layer in its dtype whatever the weight's, casting an fp32 weight
        again at every call: it caches the casts of weights that train, not of frozen ones, and a
        decoding step reads every frozen weight. Stored in ``dtype``, each frozen weight gives bit for
        bit the same products (the cast is the same rounding, done once) in half the memory. A weight a
        layer shares with another module (T5's tied embedding and output layer) gets its own copy for
        the layer, so the embedding stays fp32. Outside that autocast such a layer refuses fp32 inputs.
        """
        layers = 0
        for module in self.modules():
            if type(module) is not nn.Linear or module.weight.requires_grad or module.weight.dtype == dtype:
                continue
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
            layers += 1
        return layers

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, out_dir: Path, base_model: Path, final_dir: Path | None = None) -> None:
        """Save adapter (or full weights), value head and a small descriptor.

        The descriptor records the base model relative to ``final_dir`` (where ``out_dir`` will end
        up, default ``out_dir``), which :func:`load_trained_policy` resolves against the adapter's
        folder. ``adapter_config.json`` names it by absolute path (:func:`absolute_base`), since PEFT's
        ``AutoPeftModelForSeq2SeqLM`` resolves a relative one against the working directory.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        base_model_path = Path(os.path.relpath(base_model.resolve(), (final_dir or out_dir).resolve())).as_posix()
        self.model.save_pretrained(out_dir)
        if self.uses_lora:
            config_path = out_dir / "adapter_config.json"
            adapter = json.loads(config_path.read_text())
            adapter["base_model_name_or_path"] = absolute_base(base_model)
            config_path.write_text(json.dumps(adapter, indent=2))
        if self.value_head is not None:
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, out_dir / VALUE_HEAD_FILE)
        (out_dir / POLICY_FILE).write_text(
            json.dumps(
                {
                    "kind": "lora" if self.uses_lora else "full",
                    "base_model": base_model_path,
                    "algorithm": self.algorithm,
                },
                indent=2,
            )
        )


def absolute_base(base_model: Path) -> str:
    """The base model's absolute path in the DVC project.

    Under ``dvc exp run --temp`` (and queued experiments) a stage runs in a scratch copy that is
    deleted afterwards; ``DVC_ROOT`` then names the project itself, where the experiment's
    outputs land, so the path is mapped there.
    """
    path = base_model.resolve()
    root = os.environ.get("DVC_ROOT")
    if root:
        try:
            path = Path(root).resolve() / path.relative_to(Path.cwd().resolve())
        except ValueError:  # a base model outside the working directory keeps its path
            pass
    return path.as_posix()


def lora_targets(names: tuple[str, ...], scope: str) -> list[str] | str:
    """peft ``target_modules``: the names as given (``all``) or a regex limited to the decoder.

    peft matches a string with ``re.fullmatch`` against module paths such as
    ``decoder.block.0.layer.0.SelfAttention.q``.
    """
    if scope == "all":
        return list(names)
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"(?:.*\.)?decoder\.(?:.*\.)?(?:{alternatives})"


def trained_algorithm(path: str | Path) -> str:
    """``ppo.algorithm`` of the run that saved the policy in ``path`` (ppo for a folder saved before rloo/grpo)."""
    return json.loads((Path(path) / POLICY_FILE).read_text()).get("algorithm", "ppo")


def load_trained_policy(path: str | Path, merge: bool = True, attention: str = "auto") -> PreTrainedModel:
    """Load a policy saved by the ppo stage, ready for ``generate`` (adapters merged by default), with the
    attention kernel ``attention`` names (``policy.attention``)."""
    path = Path(path)
    descriptor = json.loads((path / POLICY_FILE).read_text())
    if descriptor["kind"] == "full":
        return use_attention(AutoModelForSeq2SeqLM.from_pretrained(path), attention).eval()
    base_path = Path(descriptor["base_model"])
    base = AutoModelForSeq2SeqLM.from_pretrained(base_path if base_path.is_absolute() else path / base_path)
    use_attention(base, attention)
    model = PeftModel.from_pretrained(base, path)
    return (model.merge_and_unload() if merge else model).eval()
