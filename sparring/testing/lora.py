"""A tiny LoRA adapter for a model folder, made with peft from the model's config (nothing downloaded),
for tests and benchmarks of the weight sync against a real vLLM server.

The base model is built on the meta device (no weights are read or allocated); only the adapter's own
tensors get storage, with small random values in both A and B, so the adapter changes what the model
says (peft's default B = 0 would make it a no-op). Rank 4 on q_proj and v_proj: about 1 MB for the
default model. Needs torch, transformers and peft (installed with the vLLM extras).
"""

from __future__ import annotations

from pathlib import Path


def make_adapter(model_dir: str | Path, out_dir: str | Path, *, rank: int = 4, seed: int = 0) -> Path:
    """Save an adapter for the model in `model_dir` into `out_dir` (adapter_config.json + safetensors)."""
    import peft
    import torch
    import transformers

    generator = torch.Generator().manual_seed(seed)
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, lora)
    for name, parameter in list(wrapped.named_parameters()):
        if "lora_" not in name:
            continue
        module_name, _, attribute = name.rpartition(".")
        values = torch.randn(parameter.shape, generator=generator) * 0.02
        setattr(wrapped.get_submodule(module_name), attribute, torch.nn.Parameter(values))
    wrapped.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
