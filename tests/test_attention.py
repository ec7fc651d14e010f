"""``policy.attention`` (eager or SDPA for the T5 policy) and the built-in policy's fused tanh GELU: each
switch takes effect where the stages load the policy, and each computes what the other path computes,
within float rounding."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM
from transformers.activations import GELUTanh, NewGELUActivation

from conftest import tiny_corpus, tiny_t5, tolerance
from detox.common.errors import ParamsError
from detox.models.attention import attention_kernel, use_attention
from detox.models.builtin import write_policy_base
from detox.models.generation import load_policy
from detox.ppo.policy import POLICY_FILE, load_trained_policy

TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"


def kernels(model: torch.nn.Module) -> set[str]:
    """The attention kernel every configured module of ``model`` dispatches to."""
    return {module.config._attn_implementation for module in model.modules() if hasattr(module, "config")}


def test_auto_is_eager_on_a_cpu_and_sdpa_where_a_gpu_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_kernel("auto") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_kernel("auto") == "sdpa"
    assert attention_kernel("eager") == "eager" and attention_kernel("sdpa") == "sdpa"
    with pytest.raises(ValueError, match="auto, eager, sdpa"):
        attention_kernel("flash")


def test_params_refuse_an_unknown_kernel_and_name_the_key(tiny):
    assert tiny().policy.attention == "auto"
    with pytest.raises(ParamsError, match=r"policy\.attention: .*'auto', 'eager' or 'sdpa'"):
        tiny(**{"policy.attention": "flash_attention_2"})


def batch(tokenizer):
    """Two prompts of different lengths (padding, so the mask is used) and a summary each."""
    enc = tokenizer(
        [
            TEMPLATE.format(dialogue="#Person1#: Hi.\n#Person2#: Hello there, how are you today?"),
            TEMPLATE.format(dialogue="#Person1#: Bye."),
        ],
        padding=True,
        return_tensors="pt",
    )
    labels = tokenizer(["They greet.", "One leaves the room."], padding=True, return_tensors="pt")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {**enc, "labels": labels}


def test_eager_and_sdpa_give_the_same_loss_gradients_and_tokens_within_rounding():
    model, tokenizer = tiny_t5(TEMPLATE, num_layers=2, num_decoder_layers=2, dropout_rate=0.0)
    inputs = batch(tokenizer)
    results = {}
    for kernel in ("sdpa", "eager"):
        use_attention(model, kernel)
        assert kernels(model) == {kernel}
        model.train()
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad():
            tokens = model.generate(
                **{k: v for k, v in inputs.items() if k != "labels"}, do_sample=True, top_k=0, max_new_tokens=8
            )
        results[kernel] = (out.logits.detach(), out.loss.item(), grads, tokens)
    (logits_s, loss_s, grads_s, tokens_s), (logits_e, loss_e, grads_e, tokens_e) = results["sdpa"], results["eager"]
    bound = tolerance(torch.float32, 4096, scale=float(logits_s.abs().max()) + 1.0)
    torch.testing.assert_close(logits_e, logits_s, rtol=0, atol=bound)
    assert abs(loss_e - loss_s) <= bound
    assert grads_e.keys() == grads_s.keys() and grads_s
    for name, grad in grads_s.items():
        torch.testing.assert_close(
            grads_e[name], grad, rtol=0, atol=tolerance(torch.float32, 4096, float(grad.abs().max()) + 1.0), msg=name
        )
    assert torch.equal(tokens_e, tokens_s)


def test_the_fused_tanh_gelu_is_flan_t5s_gelu_new_within_rounding():
    x = torch.linspace(-12, 12, 20001)
    torch.testing.assert_close(GELUTanh()(x), NewGELUActivation()(x), rtol=0, atol=tolerance(torch.float32, 16, 12.0))


@pytest.mark.parametrize(
    ("setting", "activation"), [("gated-gelu_pytorch_tanh", GELUTanh), ("gated-gelu", NewGELUActivation)]
)
def test_the_builtin_policy_is_built_with_the_feed_forward_params_name(tiny, tmp_path, setting, activation):
    params = tiny(**{"policy.builtin.feed_forward_proj": setting})
    write_policy_base(tiny_corpus()["train"], TEMPLATE, params.policy.builtin, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["feed_forward_proj"] == setting
    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(tmp_path))  # fetch writes no weights
    acts = {type(m.act) for m in model.modules() if hasattr(m, "wi_0")}
    assert acts == {activation}


def test_the_stages_loaders_apply_the_setting(tmp_path):
    model, tokenizer = tiny_t5(TEMPLATE)
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    for kernel in ("eager", "sdpa"):
        loaded, _ = load_policy(tmp_path / "policy", kernel)
        assert kernels(loaded) == {kernel}
    (tmp_path / "policy" / POLICY_FILE).write_text(json.dumps({"kind": "full"}))
    for kernel in ("eager", "sdpa"):
        assert kernels(load_trained_policy(tmp_path / "policy", attention=kernel)) == {kernel}
